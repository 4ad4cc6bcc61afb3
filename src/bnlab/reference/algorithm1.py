"""Algorithm 1 of Ioffe & Szegedy (2015): the batch-normalizing transform and its backward pass.

Read this file next to section 3 of the paper. Every function takes an input ``x`` of shape
(N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W). Statistics are per feature (dimension 1) and are taken
over every other dimension, so the mini-batch B holds m = N·L (or N·H·W, N·D·H·W) values per channel.

No speed tricks: each line is one line of the paper. The arithmetic runs in float64 whatever the input dtype:
this is the yardstick every backend is judged by, so it must be at least as accurate as any of them. Results
come back in the input's dtype, and statistics in the accumulation dtype of the backend contract (float32, or
float64 for float64 input).

Three versions of the backward pass are given and tested to agree:

- :func:`backward_paper`: the chain rule exactly as printed in the paper (∂ℓ/∂x̂, ∂ℓ/∂σ², ∂ℓ/∂μ, ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β);
- :func:`backward_darknet`: the same computation under the names used by darknet's ``batchnorm_layer.c``,
  the classic C implementation (backward_bias, backward_scale, mean_delta, variance_delta, normalize_delta);
- :func:`backward_compact`: the closed form fast kernels use, dx = γ/(m·σ) · (m·dy − Σdy − x̂·Σ(dy·x̂)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Re-exported: these belong to the package (bnlab._shapes) but have long been importable from here.
from bnlab._shapes import (
    accumulation_dtype,
    per_channel,
    reduction_dims,
    values_per_channel,
    working_dtype,
)
from bnlab._stats import batch_moments, mean_var

__all__ = [
    "ForwardResult",
    "Gradients",
    "accumulation_dtype",
    "backward_compact",
    "backward_darknet",
    "backward_paper",
    "forward_train",
    "per_channel",
    "reduction_dims",
    "values_per_channel",
    "working_dtype",
]


class ForwardResult(NamedTuple):
    """What the training forward pass computes. Statistics have shape (C,) in the accumulation dtype."""

    y: Tensor  # BN_{γ,β}(x), same shape and dtype as x
    mean: Tensor  # μ_B
    var: Tensor  # σ²_B, the biased mini-batch variance (divides by m): this is what normalizes
    invstd: Tensor  # 1/√(σ²_B + ε)
    xhat: Tensor  # x̂, the normalized input, in the working dtype (float64)


class Gradients(NamedTuple):
    """∂ℓ/∂x (shape and dtype of x), ∂ℓ/∂γ and ∂ℓ/∂β (shape (C,), dtype of γ or the accumulation dtype)."""

    dx: Tensor
    dgamma: Tensor
    dbeta: Tensor


def _affine(gamma: Tensor | None, beta: Tensor | None, channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
    # Without an affine transform, γ = 1 and β = 0: the paper's identity-initialised parameters.
    g = like.new_ones(channels) if gamma is None else gamma.to(like.dtype)
    b = like.new_zeros(channels) if beta is None else beta.to(like.dtype)
    return g, b


def forward_train(x: Tensor, gamma: Tensor | None = None, beta: Tensor | None = None,
                  eps: float = 1e-5) -> ForwardResult:
    """Algorithm 1, the batch-normalizing transform applied to a mini-batch.

    Args:
        x: (N, C, *) input, any float dtype.
        gamma, beta: (C,) scale γ and shift β, or None for γ = 1, β = 0.
        eps: ε, added to the variance for numerical stability.
    """
    xw = x.to(working_dtype(x))  # x in the working precision
    # μ_B = 1/m Σ x_i and σ²_B = 1/m Σ (x_i − μ_B)², in two passes (bnlab._stats.batch_moments: subtract μ_B
    # first, never E[x²] − E[x]², which cancels catastrophically). Both (1, C, 1, 1).
    mean, var = (per_channel(s, x) for s in mean_var(batch_moments(xw)))
    invstd = torch.rsqrt(var + eps)  # 1/√(σ²_B + ε)
    xhat = (xw - mean) * invstd  # x̂_i = (x_i − μ_B)/√(σ²_B + ε)
    g, b = _affine(gamma, beta, x.shape[1], xw)
    y = xhat * per_channel(g, x) + per_channel(b, x)  # y_i = γ x̂_i + β ≡ BN_{γ,β}(x_i)
    stat = accumulation_dtype(x.dtype)
    return ForwardResult(y.to(x.dtype), mean.flatten().to(stat), var.flatten().to(stat), invstd.flatten().to(stat),
                         xhat)


def _param_grad_dtype(gamma: Tensor | None, acc: torch.dtype) -> torch.dtype:
    return acc if gamma is None else gamma.dtype


def backward_paper(dy: Tensor, x: Tensor, gamma: Tensor | None = None, eps: float = 1e-5) -> Gradients:
    """The backward pass of Algorithm 1, term by term as in section 3 of the paper.

    Recomputes μ_B and σ²_B from x. dy is ∂ℓ/∂y with the shape of x.
    """
    acc_dtype, work = accumulation_dtype(x.dtype), working_dtype(x)
    xw, g_out = x.to(work), dy.to(work)
    dims, m = reduction_dims(x), values_per_channel(x)
    mean, var = (per_channel(s, x) for s in mean_var(batch_moments(xw)))  # μ_B and σ²_B, (1, C, 1, 1)
    xhat = (xw - mean) * torch.rsqrt(var + eps)
    g, _ = _affine(gamma, None, x.shape[1], xw)
    gamma_b = per_channel(g, x)

    dxhat = g_out * gamma_b  # ∂ℓ/∂x̂_i = ∂ℓ/∂y_i · γ
    # ∂ℓ/∂σ²_B = Σ ∂ℓ/∂x̂_i · (x_i − μ_B) · −½ (σ²_B + ε)^(−3/2)
    dvar = (dxhat * (xw - mean)).sum(dims, keepdim=True) * -0.5 * (var + eps).pow(-1.5)
    # ∂ℓ/∂μ_B = (Σ ∂ℓ/∂x̂_i · −1/√(σ²_B + ε)) + ∂ℓ/∂σ²_B · (Σ −2(x_i − μ_B))/m
    dmean = (dxhat * -torch.rsqrt(var + eps)).sum(dims, keepdim=True) + dvar * (
        -2.0 * (xw - mean)
    ).sum(dims, keepdim=True) / m
    # ∂ℓ/∂x_i = ∂ℓ/∂x̂_i · 1/√(σ²_B + ε) + ∂ℓ/∂σ²_B · 2(x_i − μ_B)/m + ∂ℓ/∂μ_B · 1/m
    dx = dxhat * torch.rsqrt(var + eps) + dvar * 2.0 * (xw - mean) / m + dmean / m
    dgamma = (g_out * xhat).sum(dims)  # ∂ℓ/∂γ = Σ ∂ℓ/∂y_i · x̂_i
    dbeta = g_out.sum(dims)  # ∂ℓ/∂β = Σ ∂ℓ/∂y_i
    pdt = _param_grad_dtype(gamma, acc_dtype)
    return Gradients(dx.to(x.dtype), dgamma.to(pdt), dbeta.to(pdt))


def backward_darknet(dy: Tensor, x: Tensor, gamma: Tensor | None = None, eps: float = 1e-5) -> Gradients:
    """The same backward pass under the names of darknet's ``backward_batchnorm_layer``.

    darknet overwrites its ``delta`` buffer step by step; here each step gets its own name. Two differences
    from darknet are deliberate: darknet normalizes with the unbiased variance and a fixed ε = 1e-5, while
    this follows the paper (biased σ²_B, the given ε). darknet's mean_delta also drops the paper's
    ∂ℓ/∂σ²·Σ−2(x−μ)/m term, which is zero because Σ(x_i − μ_B) = 0.
    """
    acc_dtype, work = accumulation_dtype(x.dtype), working_dtype(x)
    xw, delta = x.to(work), dy.to(work)
    dims, spatial_batch = reduction_dims(x), values_per_channel(x)
    mean, variance = (per_channel(s, x) for s in mean_var(batch_moments(xw)))  # mean_cpu, variance_cpu
    x_norm = (xw - mean) / torch.sqrt(variance + eps)
    scales, _ = _affine(gamma, None, x.shape[1], xw)

    bias_updates = delta.sum(dims)  # backward_bias: Σ delta over batch and space
    scale_updates = (x_norm * delta).sum(dims)  # backward_scale: Σ x_norm · delta
    delta = delta * per_channel(scales, x)  # scale_bias(delta, scales): now ∂ℓ/∂x̂
    # mean_delta: Σ delta · (−1/√(variance + ε))
    mean_delta = delta.sum(dims, keepdim=True) * (-1.0 / torch.sqrt(variance + eps))
    # variance_delta: Σ delta · (x − mean) · −½ (variance + ε)^(−3/2)
    variance_delta = (delta * (xw - mean)).sum(dims, keepdim=True) * -0.5 * (variance + eps).pow(-1.5)
    # normalize_delta: delta/√(variance + ε) + variance_delta·2(x − mean)/m + mean_delta/m
    delta = (delta / torch.sqrt(variance + eps) + variance_delta * 2.0 * (xw - mean) / spatial_batch
             + mean_delta / spatial_batch)
    pdt = _param_grad_dtype(gamma, acc_dtype)
    return Gradients(delta.to(x.dtype), scale_updates.to(pdt), bias_updates.to(pdt))


def backward_compact(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor,
                     gamma: Tensor | None = None) -> Gradients:
    """The closed form used by fast kernels, from saved μ_B and 1/√(σ²_B + ε) of shape (C,).

    Substituting ∂ℓ/∂σ² and ∂ℓ/∂μ into ∂ℓ/∂x and using Σ(x_i − μ_B) = 0 gives
        ∂ℓ/∂x_i = γ/√(σ²_B + ε) · (∂ℓ/∂y_i − (Σ∂ℓ/∂y)/m − x̂_i · (Σ ∂ℓ/∂y·x̂)/m),
    two per-channel reductions (∂ℓ/∂β and ∂ℓ/∂γ) and one elementwise pass.
    """
    acc_dtype, work = accumulation_dtype(x.dtype), working_dtype(x)
    xw, g_out = x.to(work), dy.to(work)
    dims, m = reduction_dims(x), values_per_channel(x)
    mean_b, invstd_b = per_channel(mean.to(work), x), per_channel(invstd.to(work), x)
    xhat = (xw - mean_b) * invstd_b
    dbeta = g_out.sum(dims)  # ∂ℓ/∂β
    dgamma = (g_out * xhat).sum(dims)  # ∂ℓ/∂γ
    g, _ = _affine(gamma, None, x.shape[1], xw)
    scale = per_channel(g, x) * invstd_b
    dx = scale * (g_out - per_channel(dbeta, x) / m - xhat * per_channel(dgamma, x) / m)
    pdt = _param_grad_dtype(gamma, acc_dtype)
    return Gradients(dx.to(x.dtype), dgamma.to(pdt), dbeta.to(pdt))
