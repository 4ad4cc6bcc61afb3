"""``LazyBatchNorm1d/2d/3d``: torch's lazy batch-norm modules that become bnlab's once they see a batch.

A lazy layer infers ``num_features`` from ``input.size(1)`` on its first call, materializes γ, β and the running
statistics, and then changes its class to :class:`bnlab.nn.BatchNorm1d` (2d, 3d), keeping its ``backend``. Until
then it is a subclass of :class:`torch.nn.LazyBatchNorm2d` (1d, 3d), so ``isinstance`` checks, state_dict loading
into an uninitialized layer, pickling and torch's lazy-module machinery work as they do for torch's own classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin

from bnlab.nn.batchnorm import BackendMixin, BatchNorm1d, BatchNorm2d, BatchNorm3d, assign_backend

__all__ = ["LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d"]


class _LazyBackendMixin:
    """The ``backend`` keyword on torch's lazy classes, and a forward that is bnlab's."""

    cls_to_become: type[torch.nn.Module]
    #: The same property as the class it becomes, so the backend survives the class switch.
    backend = BackendMixin.backend

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, bias: bool = True,
                 backend: str = "auto") -> None:
        assign_backend(self, backend)  # checked before torch allocates anything
        # Recent torch takes bias=False (γ without β); pass it only when asked, so older torch still works.
        extra = {} if bias else {"bias": False}
        super().__init__(eps, momentum, affine, track_running_stats, device, dtype,  # type: ignore[call-arg]
                         **extra)

    def forward(self, input: Tensor) -> Tensor:
        # torch's lazy-module pre-hook materializes the layer and switches its class to cls_to_become before
        # this body runs, but ``module(x)`` had already looked up this forward: hand over to the new class's.
        if isinstance(self, LazyModuleMixin):
            raise RuntimeError(
                f"{type(self).__name__} has not inferred its number of features yet: call the module itself, "
                f"module(input), so that torch's lazy-module hook can materialize it, not module.forward(input)"
            )
        return type(self).forward(self, input)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"  # type: ignore[misc]


class LazyBatchNorm1d(_LazyBackendMixin, torch.nn.LazyBatchNorm1d):
    """:class:`torch.nn.LazyBatchNorm1d` that becomes :class:`bnlab.nn.BatchNorm1d` on its first batch.

    Same arguments and defaults as torch's lazy class (``num_features`` is inferred from ``input.size(1)``),
    plus the keyword ``backend`` (``"auto"`` or a name from :func:`bnlab.available_backends`).
    """

    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyBackendMixin, torch.nn.LazyBatchNorm2d):
    """:class:`torch.nn.LazyBatchNorm2d` that becomes :class:`bnlab.nn.BatchNorm2d`; arguments as
    :class:`LazyBatchNorm1d`."""

    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_LazyBackendMixin, torch.nn.LazyBatchNorm3d):
    """:class:`torch.nn.LazyBatchNorm3d` that becomes :class:`bnlab.nn.BatchNorm3d`; arguments as
    :class:`LazyBatchNorm1d`."""

    cls_to_become = BatchNorm3d
