"""The four phases in plain torch ops at the accumulation dtype (float32; float64 for float64 input).

What a backend without a kernel of its own for a phase runs: ``native`` for everything but its ATen fast paths,
``triton`` for masked statistics. The formulas are the reference's (:mod:`bnlab.reference.fused`), evaluated in
the accumulation dtype instead of float64, so they are as accurate as PyTorch's own kernels and no slower than
PyTorch's unfused sequence of ops.
"""

from __future__ import annotations

from torch import Tensor

from bnlab._shapes import accumulation_dtype, memory_format_of
from bnlab._stats import Moments, batch_moments
from bnlab.kernels.base import GradSums, empty_moments
from bnlab.reference import fused as ref

__all__ = ["activation_grad_from_x", "backward_elemt", "backward_reduce", "elemt", "stats"]


def stats(x: Tensor, mask: Tensor | None = None) -> Moments:
    """(count, μ, M2) per channel, two passes over x (see :func:`bnlab._stats.batch_moments`)."""
    if x.numel() == 0 and mask is None:
        return empty_moments(x)
    return batch_moments(x, mask)


def elemt(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
          residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01) -> Tensor:
    """y = act(γ·(x − μ)·invstd + β + r), computed in the accumulation dtype and rounded once."""
    y = ref.normalize(x, mean, invstd, weight, bias, residual, activation, negative_slope,
                      dtype=accumulation_dtype(x.dtype))[0]
    return _like(y, x)


def backward_reduce(grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                    bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                    negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
    """(Σ dz, Σ dz·x̂) per channel in the accumulation dtype."""
    dz, xhat = ref.grad_and_xhat(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                                 from_output, dtype=accumulation_dtype(saved.dtype))
    return GradSums(*ref.reduce_grads(dz, xhat))


def backward_elemt(grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                   bias: Tensor | None, sums: GradSums, count: Tensor | float, residual: Tensor | None = None,
                   activation: str = "identity", negative_slope: float = 0.01, from_output: bool = False,
                   need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
    """(dx, dr) from the reduced sums and the count they were taken over."""
    dz, xhat = ref.grad_and_xhat(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                                 from_output, dtype=accumulation_dtype(saved.dtype))
    dx = ref.input_grad(dz, xhat, invstd, weight, sums.sum_dz, sums.sum_dz_xhat, count)
    return _like(dx, saved), (_like(dz, saved) if need_dresidual else None)


def _like(t: Tensor, x: Tensor) -> Tensor:
    # x's dtype and memory format: the arithmetic follows the layout of its largest operand, usually x's already.
    return t.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def activation_grad_from_x(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
                           residual: Tensor | None, activation: str, negative_slope: float) -> Tensor:
    """act'(z) for z = γx̂ + β + r recomputed from x, in the accumulation dtype (for unfused backward passes)."""
    z = ref.normalize(x, mean, invstd, weight, bias, residual, "identity", dtype=accumulation_dtype(x.dtype))[1]
    return ref.activation_grad(z, activation, negative_slope)

