"""Masked batch norm (padded sequences) over the backend phases.

For an (N, C, L) input and a boolean (N, L) mask, μ_B and σ²_B are taken over the valid positions only (the
``stats`` phase with the mask; count m = the number of valid positions) and every position, padding included, is
normalized with them. The gradient is exact for that function: padded outputs depend on the valid inputs through
the statistics, so the sums Σdy and Σdy·x̂ run over every position while the statistics' terms reach only valid
inputs,

    valid j:   ∂ℓ/∂x_j = γ/σ_B·(dy_j − Σ_all dy/m − x̂_j·Σ_all(dy·x̂)/m)      (backward_reduce → backward_elemt)
    padded j:  ∂ℓ/∂x_j = γ/σ_B·dy_j                                           (elemt of dy with centre 0)

and ∂ℓ/∂γ = Σ_all dy·x̂, ∂ℓ/∂β = Σ_all dy. The running statistics take the valid count for Bessel's factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._shapes import accumulation_dtype, per_channel
from bnlab.kernels.base import Backend
from bnlab.variants.call import VariantCall, affine

__all__ = ["MaskedCall", "check_mask"]


def check_mask(x: Tensor, mask: Tensor, training: bool, layer: str = "batch_norm") -> None:
    """A boolean (N, L) mask for an (N, C, L) input on x's device; in training, ≥ 2 valid positions.

    The count check reads one number on the host (a synchronisation on an accelerator): the price of a clear
    error instead of NaN statistics. It is skipped while ``torch.compile`` traces.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{layer}: mask must be a boolean tensor of shape (N, L), got {type(mask).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{layer}: a mask needs an (N, C, L) input, got an input of shape {tuple(x.shape)}")
    if mask.dtype != torch.bool or mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"{layer}: mask must be a boolean tensor of shape (N, L) = {(x.shape[0], x.shape[2])} for an input of "
            f"shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)} (True marks a valid position)"
        )
    if mask.device != x.device:
        raise ValueError(f"{layer}: mask is on {mask.device} but the input on {x.device}; move it with .to()")
    if training and x.numel() and not torch.compiler.is_compiling():
        valid = int(mask.sum())
        if valid < 2:
            raise ValueError(
                f"{layer}: the mask leaves {valid} valid value(s) per channel; training needs at least 2 to take "
                f"a variance: mask fewer positions, or call .eval() to normalize with the running statistics"
            )


class MaskedCall(VariantCall):
    """One training call of masked batch norm; ``mask`` checked by :func:`check_mask`."""

    def __init__(self, eps: float, mask: Tensor) -> None:
        super().__init__(eps)
        self.mask = mask

    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        moments = backend.stats(x, self.mask)
        self.count = moments.count
        self.mean, self.var = _stats.mean_var(moments)
        self.invstd = torch.rsqrt(self.var + self.eps)
        return backend.elemt(x, self.mean, self.invstd, weight, bias)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        sums = backend.backward_reduce(grad_y, x, self.mean, self.invstd, weight, bias)
        dx_valid, _ = backend.backward_elemt(grad_y, x, self.mean, self.invstd, weight, bias, sums, self.count)
        # A padded position influences no statistic: only its own output, γ/σ_B·dy.
        dx_padded = backend.elemt(grad_y, torch.zeros_like(self.mean), self.invstd, weight, None)
        dx = torch.where(self.mask.unsqueeze(1), dx_valid, dx_padded)
        return dx, sums.sum_dz_xhat, sums.sum_dz

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        moments = _stats.batch_moments(x, self.mask, dtype=accumulation_dtype(x.dtype))
        mean, var = _stats.mean_var(moments)
        self.count, self.mean, self.var = moments.count, mean.detach(), var.detach()
        xw = x.to(mean.dtype)
        xhat = (xw - per_channel(mean, xw)) * per_channel(torch.rsqrt(var + self.eps), xw)
        return affine(xhat, weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        _stats.update_running_stats(running_mean, running_var, self.mean, self.var, self.count, factor)
