"""Drop-in ``BatchNorm1d/2d/3d``: subclasses of torch's modules that run on a bnlab backend.

They keep torch's constructor, buffers, state_dict keys, defaults, error types and checkpoint upgrades
(inherited), so ``isinstance(m, torch.nn.BatchNorm2d)`` holds and torch's utilities keep working. They change
only ``forward`` (dispatch to a backend) and ``extra_repr`` (show the backend).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_batch_norm_args, check_input_rank
from bnlab.functional import _dispatch
from bnlab.kernels import check_backend_name

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _module_forward(module: Any, input: Tensor) -> Tensor:
    """torch's ``_BatchNorm.forward``, step for step, with the counter and factor from :mod:`bnlab._stats`.

    One difference: the arguments are checked before the batch counter moves, so a call that raises leaves
    the module exactly as it was (torch counts the batch first).
    """
    check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    # Batch statistics in training, and in eval when there are no running statistics to use.
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    keep_buffers = not module.training or module.track_running_stats
    running_mean = module.running_mean if keep_buffers else None
    running_var = module.running_var if keep_buffers else None
    check_batch_norm_args(input, running_mean, running_var, module.weight, module.bias, use_batch_stats)
    factor: float | Tensor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        factor = _stats.advance(module.num_batches_tracked, module.momentum)
    return _dispatch(input, running_mean, running_var, module.weight, module.bias, use_batch_stats, factor,
                     module.eps, module.backend)


# A leaf for torch.fx: a traced graph calls this with the module itself, so .train()/.eval() on the traced
# GraphModule still switches the mode, as it does for torch's own batch-norm modules.
torch.fx.wrap("_module_forward")


class _BackendMixin:
    """What bnlab adds to a torch batch-norm class: a backend name and a forward that uses it."""

    _bnlab_ranks: tuple[int, ...] = ()
    backend: str

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, bias: bool = True,
                 backend: str = "auto") -> None:
        check_backend_name(backend)
        # Recent torch takes bias=False (γ without β); pass it only when asked, so older torch still works.
        extra = {} if bias else {"bias": False}
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, **extra)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"  # type: ignore[misc]


class BatchNorm1d(_BackendMixin, torch.nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) input: statistics per feature C over N (and L).

    Same arguments and defaults as :class:`torch.nn.BatchNorm1d`, plus the keyword ``backend``: ``"auto"``
    or a name from :func:`bnlab.available_backends`.
    """

    _bnlab_ranks = (2, 3)


class BatchNorm2d(_BackendMixin, torch.nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) input: statistics per channel C over N, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm2d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = (4,)


class BatchNorm3d(_BackendMixin, torch.nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) input: statistics per channel C over N, D, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm3d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = (5,)
