"""Training under another framework's batch-norm rules (``convention=`` on bnlab modules; spec in docs/compat.md).

"keras" and "flax" normalize as torch does and differ in the running variance: they average the biased σ²_B
(no Bessel factor), and a batch with one value per channel is allowed (σ²_B = 0, y = β). ``momentum`` keeps
torch's meaning on the module (the converters translate Keras's and Flax's decay). "darknet" (unbiased variance
with ε outside the root, in training and eval) is not implemented on modules yet: :mod:`bnlab.compat` has its
float64 rule and :mod:`bnlab.reference.darknet` its layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._shapes import accumulation_dtype, per_channel, reduction_dims, values_per_channel
from bnlab.kernels.base import Backend
from bnlab.variants.call import VariantCall, affine

__all__ = ["CONVENTIONS", "BiasedVarianceCall", "check_convention"]

CONVENTIONS = ("torch", "keras", "flax", "darknet")
#: Conventions a module trains under today.
IMPLEMENTED = ("torch", "keras", "flax")


def check_convention(convention: object) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention not in IMPLEMENTED:
        raise NotImplementedError(
            f"convention={convention!r} is not implemented on bnlab modules yet; bnlab.compat.train_step_reference "
            f"and bnlab.reference.darknet have darknet's rules"
        )


class BiasedVarianceCall(VariantCall):
    """Batch norm's training step whose running variance averages the biased σ²_B (Keras, Flax)."""

    min_values = 1

    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        moments = backend.stats(x)
        self.mean, self.var = _stats.mean_var(moments)
        self.invstd = torch.rsqrt(self.var + self.eps)
        return backend.elemt(x, self.mean, self.invstd, weight, bias)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        sums = backend.backward_reduce(grad_y, x, self.mean, self.invstd, weight, bias)
        dx, _ = backend.backward_elemt(grad_y, x, self.mean, self.invstd, weight, bias, sums,
                                       values_per_channel(x))
        return dx, sums.sum_dz_xhat, sums.sum_dz

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        xw = x.to(accumulation_dtype(x.dtype))
        dims = reduction_dims(x)
        mean = xw.mean(dims)
        var = (xw - per_channel(mean, xw)).square().mean(dims)
        self.mean, self.var = mean.detach(), var.detach()
        return affine((xw - per_channel(mean, xw)) * per_channel(torch.rsqrt(var + self.eps), xw), weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        _stats.update_running_stats(running_mean, running_var, self.mean, self.var, 1, factor, unbiased=True)
