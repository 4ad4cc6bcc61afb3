"""Ghost batch norm (Hoffer et al., 2017): ``GhostBatchNorm1d/2d/3d``, subclasses of bnlab's (hence torch's)
BatchNorm. The state_dict is BatchNorm's; eval is BatchNorm's eval. The math is in :mod:`bnlab.variants.ghost`."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.variant import variant_forward
from bnlab.variants.convention import check_convention
from bnlab.variants.ghost import GhostCall, check_virtual_batch_size

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d", "GhostMixin"]


class GhostMixin:
    """``virtual_batch_size`` on a bnlab batch-norm class, and a training forward over ghost batches."""

    virtual_batch_size: int
    _bnlab_conventions: tuple[str, ...] = ("torch",)
    _bnlab_convention_refusal = (
        "ghost batch norm already follows tf.keras's virtual_batch_size rule for its running statistics "
        "(docs/variants.md), and Keras 3, Flax and darknet have no ghost batch norm; use convention='torch'")

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        virtual = check_virtual_batch_size(virtual_batch_size)
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, **kwargs)
        self.virtual_batch_size = virtual

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            raise TypeError(f"{type(self).__name__} takes no mask: masked statistics are bnlab.nn.BatchNorm1d's "
                            f"(layer(x, mask))")
        layer = type(self).__name__
        if self.convention != "torch":  # type: ignore[attr-defined]  # (assigned after construction)
            check_convention(self.convention, self.momentum, layer,  # type: ignore[attr-defined]
                             self._bnlab_conventions, self._bnlab_convention_refusal)
        return variant_forward(self, input, lambda step: GhostCall(self.eps,  # type: ignore[attr-defined]
                                                                   self.virtual_batch_size, layer))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"  # type: ignore[misc]


class GhostBatchNorm1d(GhostMixin, BatchNorm1d):
    """Ghost batch norm over (N, C) or (N, C, L) input.

    Args: ``num_features``, ``virtual_batch_size`` (samples per ghost batch along dim 0; the last ghost batch may
    be smaller), then those of :class:`bnlab.nn.BatchNorm1d`. Each ghost batch is normalized with its own
    statistics; the running statistics move once per call, with the mean over ghost batches of their means and
    of their unbiased variances (tf.keras's rule).
    """


class GhostBatchNorm2d(GhostMixin, BatchNorm2d):
    """Ghost batch norm over (N, C, H, W) input; arguments as :class:`GhostBatchNorm1d`."""


class GhostBatchNorm3d(GhostMixin, BatchNorm3d):
    """Ghost batch norm over (N, C, D, H, W) input; arguments as :class:`GhostBatchNorm1d`."""
