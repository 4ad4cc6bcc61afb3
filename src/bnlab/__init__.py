"""bnlab: Batch Normalization (Ioffe & Szegedy, 2015) for PyTorch.

The public surface:

- :mod:`bnlab.reference`: the paper's Algorithms 1 and 2 in plain torch ops;
- :func:`bnlab.functional.batch_norm`: ``torch.nn.functional.batch_norm`` with a choice of backend;
- :class:`bnlab.BatchNorm1d` / ``2d`` / ``3d``: drop-in subclasses of torch's modules, and
  :class:`bnlab.LazyBatchNorm1d` / ``2d`` / ``3d`` that infer ``num_features`` and become them;
- :class:`bnlab.SyncBatchNorm`: statistics over every process of a ``torch.distributed`` group (gloo or NCCL);
- :func:`bnlab.convert`: swap torch's batch-norm modules for bnlab's in a model, and back (or freeze them);
- :func:`bnlab.available_backends`: which backends can run on a device for a dtype;
- model tools (:mod:`bnlab.tools`): :func:`bnlab.fold`, :func:`bnlab.recalibrate`, :func:`bnlab.freeze`,
  :func:`bnlab.doctor`, :func:`bnlab.summary` (a Keras-style table of layers and parameters), and
  :class:`bnlab.FrozenBatchNorm2d` (and 1d/3d).
- :class:`bnlab.nn.BatchNormAct2d` (1d, 3d) and :func:`bnlab.functional.batch_norm_act` (also
  ``bnlab.fused.batch_norm_act``): act(BN(x) + residual) as one operation.

The backends themselves (:mod:`bnlab.kernels`) are importable for those who write one (CONTRIBUTING.md), but are
not part of this surface.

Every name here is imported on first use (PEP 562), so ``import bnlab`` does not import torch: the ``bnlab``
command (whose entry point lives in :mod:`bnlab.cli`, below this package) starts at once and can answer Ctrl-C
from its first moment. The custom ops and backends register when a layer or function is first used.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which the command's first moments skip

__version__ = "0.1.0"

#: The submodules that are part of the public surface.
_SUBMODULES = frozenset({"compat", "functional", "fused", "init", "kernels", "nn", "reference", "tools"})
#: Each re-exported name, and the module it comes from.
_NAMES = {
    "BackendUnavailableError": "bnlab.kernels",
    "available_backends": "bnlab.kernels",
    **{name: "bnlab.nn" for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "FrozenBatchNorm1d",
                                     "FrozenBatchNorm2d", "FrozenBatchNorm3d", "LazyBatchNorm1d",
                                     "LazyBatchNorm2d", "LazyBatchNorm3d", "SyncBatchNorm")},
    **{name: "bnlab.tools" for name in ("convert", "doctor", "fold", "freeze", "recalibrate",
                                        "summary")},
}

__all__ = [  # the submodules and the names above
    "BackendUnavailableError",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "SyncBatchNorm",
    "__version__",
    "available_backends",
    "compat",
    "convert",
    "doctor",
    "fold",
    "freeze",
    "functional",
    "fused",
    "init",
    "nn",
    "recalibrate",
    "reference",
    "summary",
    "tools",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these on first use
    from typing import Any

    from bnlab import compat, functional, fused, init, nn, reference, tools
    from bnlab.kernels import BackendUnavailableError, available_backends
    from bnlab.nn import (
        BatchNorm1d,
        BatchNorm2d,
        BatchNorm3d,
        FrozenBatchNorm1d,
        FrozenBatchNorm2d,
        FrozenBatchNorm3d,
        LazyBatchNorm1d,
        LazyBatchNorm2d,
        LazyBatchNorm3d,
        SyncBatchNorm,
    )

    # From their own modules: mypy takes ``from bnlab.tools import fold`` under TYPE_CHECKING for a second
    # definition, as the submodule bnlab.tools.fold has the same name.
    from bnlab.tools import doctor
    from bnlab.tools.convert import convert
    from bnlab.tools.fold import fold
    from bnlab.tools.freeze import freeze
    from bnlab.tools.recalibrate import recalibrate
    from bnlab.tools.summary import summary


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"bnlab.{name}")  # the import also sets it on this package
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # later lookups find it without coming here
        return value
    raise AttributeError(f"module 'bnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
