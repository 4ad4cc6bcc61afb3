"""bnlab: Batch Normalization (Ioffe & Szegedy, 2015) for PyTorch.

The public surface:

- :mod:`bnlab.reference`: the paper's Algorithms 1 and 2 in plain torch ops;
- :func:`bnlab.functional.batch_norm`: ``torch.nn.functional.batch_norm`` with a choice of backend;
- :class:`bnlab.BatchNorm1d` / ``2d`` / ``3d``: drop-in subclasses of torch's modules;
- :func:`bnlab.convert`: swap torch's batch-norm modules for bnlab's in a model, and back (or freeze them);
- :func:`bnlab.available_backends`: which backends can run on a device for a dtype;
- model tools (:mod:`bnlab.tools`): :func:`bnlab.fold`, :func:`bnlab.recalibrate`, :func:`bnlab.freeze`,
  :func:`bnlab.doctor`, and :class:`bnlab.FrozenBatchNorm2d` (and 1d/3d).
- :class:`bnlab.nn.BatchNormAct2d` (1d, 3d) and :func:`bnlab.functional.batch_norm_act` (also
  ``bnlab.fused.batch_norm_act``): act(BN(x) + residual) as one operation.

The backends themselves (:mod:`bnlab.kernels`) are importable for those who write one (CONTRIBUTING.md), but are
not part of this surface.
"""

from bnlab import functional, fused, nn, reference, tools
from bnlab.kernels import BackendUnavailableError, available_backends
from bnlab.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from bnlab.tools import convert, doctor, fold, freeze, recalibrate

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "__version__",
    "available_backends",
    "convert",
    "doctor",
    "fold",
    "freeze",
    "functional",
    "fused",
    "nn",
    "recalibrate",
    "reference",
    "tools",
]
