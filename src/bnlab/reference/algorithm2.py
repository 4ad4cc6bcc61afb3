"""Algorithm 2 of Ioffe & Szegedy (2015): batch normalization at inference time.

After training, the mini-batch statistics are replaced by population statistics (lines 8-10):

    E[x]   ← E_B[μ_B]
    Var[x] ← m/(m−1) · E_B[σ²_B]        (the unbiased estimate, from mini-batches of size m)

and the layer becomes a fixed affine map (line 11):

    y = γ/√(Var[x] + ε) · x + (β − γ·E[x]/√(Var[x] + ε)).

The paper assumes every mini-batch has the same size m. Here batches may differ in size (the last batch of
an epoch is often short), so the expectation over batches weights each batch by its m_B values per channel,
and Bessel's correction is applied per batch: Var[x] = Σ_B m_B · m_B/(m_B−1) · σ²_B / Σ_B m_B. With equal
sizes this is exactly the paper's formula.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from bnlab._shapes import accumulation_dtype, per_channel, values_per_channel, working_dtype
from bnlab._stats import batch_moments, mean_var


class PopulationStatistics(NamedTuple):
    """E[x] and Var[x] of shape (C,), and how much data they were estimated from."""

    mean: Tensor
    var: Tensor  # unbiased: m/(m−1) · E_B[σ²_B]
    num_batches: int
    num_values: int  # Σ_B m_B, values per channel over all batches


def population_statistics(batches: Iterable[Tensor]) -> PopulationStatistics:
    """Lines 8-10 of Algorithm 2 over the given mini-batches of inputs to one BN layer, each (N, C, *)."""
    mean_sum: Tensor | None = None
    var_sum: Tensor | None = None
    num_batches = num_values = 0
    for x in batches:
        m = values_per_channel(x)
        if m < 2:
            raise ValueError(
                f"each batch needs at least 2 values per channel to estimate a variance, got a batch of shape "
                f"{tuple(x.shape)}; drop it or merge it with another batch"
            )
        mu, sigma2 = mean_var(batch_moments(x, dtype=working_dtype(x)))  # μ_B and σ²_B, biased
        mean_sum = m * mu if mean_sum is None else mean_sum + m * mu
        unbiased = m / (m - 1) * sigma2  # Bessel's correction, m/(m−1)
        var_sum = m * unbiased if var_sum is None else var_sum + m * unbiased
        num_batches += 1
        num_values += m
    if mean_sum is None or var_sum is None:
        raise ValueError("population_statistics needs at least one batch, got an empty iterable")
    stat = accumulation_dtype(x.dtype)
    return PopulationStatistics((mean_sum / num_values).to(stat), (var_sum / num_values).to(stat), num_batches,
                                num_values)


class InferenceAffine(NamedTuple):
    """The per-channel affine map y = scale·x + shift that BN becomes at inference, shape (C,) each."""

    scale: Tensor  # γ/√(Var[x] + ε)
    shift: Tensor  # β − γ·E[x]/√(Var[x] + ε)


def inference_affine(mean: Tensor, var: Tensor, gamma: Tensor | None = None, beta: Tensor | None = None,
                     eps: float = 1e-5) -> InferenceAffine:
    """Line 11 of Algorithm 2: fold E[x], Var[x], γ and β into one scale and shift per channel."""
    dtype = torch.promote_types(accumulation_dtype(mean.dtype), accumulation_dtype(var.dtype))
    mean, var = mean.to(dtype), var.to(dtype)
    g = torch.ones_like(mean) if gamma is None else gamma.to(dtype)
    b = torch.zeros_like(mean) if beta is None else beta.to(dtype)
    scale = g * torch.rsqrt(var + eps)  # γ/√(Var[x] + ε)
    shift = b - mean * scale  # β − γE[x]/√(Var[x] + ε)
    return InferenceAffine(scale, shift)


def forward_inference(x: Tensor, mean: Tensor, var: Tensor, gamma: Tensor | None = None,
                      beta: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """y = γ/√(Var[x] + ε)·x + (β − γE[x]/√(Var[x] + ε)), with population (running) statistics of shape (C,)."""
    work = working_dtype(x)
    g = None if gamma is None else gamma.to(work)
    b = None if beta is None else beta.to(work)
    scale, shift = inference_affine(mean.to(work), var.to(work), g, b, eps)
    acc = x.to(work)
    return (acc * per_channel(scale, x) + per_channel(shift, x)).to(x.dtype)
