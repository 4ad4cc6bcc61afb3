"""The four phases in plain torch ops at the accumulation dtype (float32; float64 for float64 input).

What a backend without a kernel of its own for a phase runs: ``native`` for everything but its ATen fast paths,
``triton`` for masked statistics. The formulas are the reference's (:mod:`bnlab.reference.fused`), evaluated in
the accumulation dtype instead of float64, so they are as accurate as PyTorch's own kernels and no slower than
PyTorch's unfused sequence of ops.

Also what every call runs under PyTorch's transforms (forward-mode AD, vmap, batched gradients), which cannot see
through a backend's kernels: :func:`train_for_transforms`, :func:`eval_for_transforms` and
:func:`backward_for_transforms` (see :mod:`bnlab._autograd`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab._shapes import accumulation_dtype, memory_format_of, reduction_dims, values_per_channel
from bnlab._stats import Moments, batch_moments
from bnlab.kernels.base import GradSums, empty_moments
from bnlab.reference import fused as ref

__all__ = ["activation_grad_from_x", "backward_elemt", "backward_for_transforms", "backward_reduce", "elemt",
           "eval_for_transforms", "stats", "train_for_transforms"]


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



# ------------------------------------------------------------------------ for torch's transforms (forward AD, vmap)
def train_for_transforms(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                         eps: float, activation: str = "identity",
                         negative_slope: float = 0.01) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, μ_B, invstd, σ²_B) of a training-mode act(BN(x) + r), in differentiable torch ops only.

    What a call runs under forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``) and functorch
    transforms (``vmap``, ``grad``): ATen's batch norm brings PyTorch's own derivative formulas (the JVP
    γ·invstd·(ṫ − mean(ṫ) − x̂·mean(ṫ·x̂)) + γ̇·x̂ + β̇), batching rules and double backward; the residual and the
    activation are torch ops after it. Computed at the accumulation dtype and rounded once, as the backends do.
    The statistics, for the running update only, carry no derivative.
    """
    acc = accumulation_dtype(x.dtype)
    xa = x.to(acc)
    y = torch.batch_norm(xa, weight, bias, None, None, True, 0.0, eps, torch.backends.cudnn.enabled)
    with torch.no_grad():
        if x.numel():
            var, mean = torch.var_mean(xa.detach(), reduction_dims(x), correction=0)
        else:  # an empty batch has no statistics (zeros, as every backend answers; the running update skips it)
            mean = var = x.new_zeros(x.shape[1], dtype=acc)
        invstd = torch.rsqrt(var + eps)
    return _residual_and_activation(y, residual, activation, negative_slope, x), mean, invstd, var


def eval_for_transforms(x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
                        weight: Tensor | None, bias: Tensor | None, eps: float, activation: str = "identity",
                        negative_slope: float = 0.01) -> Tensor:
    """Inference-mode act(BN(x) + r) in differentiable torch ops, as :func:`train_for_transforms`.

    As in torch, a tangent on the running statistics alone is ignored, and with one on the input too ATen raises
    ("batch_norm is not differentiable wrt running_mean and running_var").
    """
    y = torch.batch_norm(x.to(accumulation_dtype(x.dtype)), weight, bias, running_mean, running_var, False, 0.0,
                         eps, torch.backends.cudnn.enabled)
    return _residual_and_activation(y, residual, activation, negative_slope, x)


def _residual_and_activation(y: Tensor, residual: Tensor | None, activation: str, negative_slope: float,
                             x: Tensor) -> Tensor:
    if residual is not None:
        y = y + residual.to(y.dtype)
    return ref.activate(y, activation, negative_slope).to(x.dtype)


def backward_for_transforms(grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                            bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                            negative_slope: float = 0.01, from_output: bool = False,
                            need_dresidual: bool = False) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """(dx, dr, dγ, dβ) of a training call from the two phases above, in torch ops that vmap can batch.

    For a backward pass run under vmap (``autograd.grad(..., is_grads_batched=True)``, ``jacrev``, gradcheck's
    batched gradients): a kernel that reads data pointers (cpu, triton) cannot take a batched ``grad_y``.
    """
    sums = backward_reduce(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                           from_output)
    dx, dres = backward_elemt(grad_y, saved, mean, invstd, weight, bias, sums, values_per_channel(saved), residual,
                              activation, negative_slope, from_output, need_dresidual)
    return dx, dres, sums.sum_dz_xhat, sums.sum_dz
