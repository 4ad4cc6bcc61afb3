"""Batch Renormalization (Ioffe, 2017): ``BatchRenorm1d/2d/3d``, subclasses of bnlab's (hence torch's) BatchNorm.

The state_dict is BatchNorm's (a plain checkpoint loads); eval is BatchNorm's eval. The math and the schedules are
in :mod:`bnlab.variants.renorm`.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.variant import variant_forward
from bnlab.variants.convention import check_convention
from bnlab.variants.renorm import Bound, RenormCall, RenormSchedule, check_bound, renorm_schedule

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "RenormMixin", "RenormSchedule", "renorm_schedule"]


class RenormMixin:
    """r_max and d_max on a bnlab batch-norm class, and a training forward that renormalizes."""

    r_max: Bound
    d_max: Bound
    _bnlab_conventions: tuple[str, ...] = ("torch",)
    _bnlab_convention_refusal = (
        "batch renorm is Ioffe's rule over torch's batch norm; Keras's renorm=True keeps other statistics (its "
        "moving stddev; bnlab.compat.from_keras refuses it) and Flax and darknet have none; use convention='torch'")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.01, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 r_max: Bound = 3.0, d_max: Bound = 5.0, **kwargs: Any) -> None:
        check_bound("r_max", r_max, 1.0)
        check_bound("d_max", d_max, 0.0)
        if not track_running_stats:
            raise ValueError(f"{type(self).__name__} needs track_running_stats=True: r and d compare the batch's "
                             f"statistics with the running ones")
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, **kwargs)
        self.r_max, self.d_max = r_max, d_max

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            raise TypeError(f"{type(self).__name__} takes no mask: masked statistics are bnlab.nn.BatchNorm1d's "
                            f"(layer(x, mask))")
        if self.convention != "torch":  # type: ignore[attr-defined]  # (assigned after construction)
            check_convention(self.convention, self.momentum, type(self).__name__,  # type: ignore[attr-defined]
                             self._bnlab_conventions, self._bnlab_convention_refusal)

        def make_call(step: Tensor | None) -> RenormCall:
            assert step is not None  # track_running_stats=True: there is a counter
            return RenormCall(self.eps, self.running_mean, self.running_var,  # type: ignore[attr-defined]
                              self.r_max, self.d_max, step)

        return variant_forward(self, input, make_call)

    def extra_repr(self) -> str:
        def show(bound: Bound) -> str:
            return "inf" if bound == math.inf else repr(bound)

        return f"{super().extra_repr()}, r_max={show(self.r_max)}, d_max={show(self.d_max)}"  # type: ignore[misc]


class BatchRenorm1d(RenormMixin, BatchNorm1d):
    """Batch renorm over (N, C) or (N, C, L) input.

    Args: those of :class:`bnlab.nn.BatchNorm1d` (momentum default 0.01, ``track_running_stats`` must be True),
    plus keyword ``r_max`` (≥ 1, default 3) and ``d_max`` (≥ 0, default 5): numbers, ``math.inf`` for no clipping,
    or schedules of the step count (:func:`renorm_schedule`). r_max = 1, d_max = 0 is batch norm.
    """


class BatchRenorm2d(RenormMixin, BatchNorm2d):
    """Batch renorm over (N, C, H, W) input; arguments as :class:`BatchRenorm1d`."""


class BatchRenorm3d(RenormMixin, BatchNorm3d):
    """Batch renorm over (N, C, D, H, W) input; arguments as :class:`BatchRenorm1d`."""
