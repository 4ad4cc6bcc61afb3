"""Batch norm, a residual add and an activation as one operation, in float64: the yardstick of every fused kernel.

    z = BN_{γ,β}(x) + r = γ·x̂ + β + r        (r, the residual, is optional)
    y = act(z)                               act ∈ ACTIVATIONS

Plain batch norm is the case r = None, act = identity. Every function here computes in float64 from inputs of any
float dtype (upcast once), and returns float64: rounding to the input's dtype is the caller's, once, at the end
(the ``reference`` backend does it when it serves the backend contract).

The backward pass can start from either of two saved tensors:

- ``from_output=False`` ("save the input"): x is saved (and r); z is recomputed from x and the statistics.
- ``from_output=True`` (InPlace-ABN's trick, for invertible activations): y is saved (and r); the backward recovers
  z = act⁻¹(y), act'(z) from y, and x̂ = (z − β − r)/γ. Exact in exact arithmetic for γ ≠ 0. In floating point,
  y's rounding error δy becomes an error of δy/act'(z) in z and δy/(act'(z)·|γ|) in x̂: the recovery is
  ill-conditioned where γ = 0 (impossible) and, for ELU, where the output approaches its saturation at −1
  (act'(z) = 1 + y → 0). :func:`output_determines_input` draws the line; beyond it the caller keeps x.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab._shapes import per_channel, reduction_dims, values_per_channel, working_dtype
from bnlab._stats import batch_moments, mean_var

ACTIVATIONS = ("identity", "relu", "leaky_relu", "silu", "elu")
#: Activations whose input can be recovered from their output (leaky_relu needs negative_slope > 0).
INVERTIBLE = ("identity", "leaky_relu", "elu")
#: Integer codes the kernels use for the activations (the index into ACTIVATIONS).
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

#: The smallest ELU slope act'(z) = 1 + y at which y still determines z well enough: there z carries at most
#: 1/ELU_MIN_SLOPE times y's relative rounding error. Below it (outputs within this distance of the saturation
#: at −1) ``save="output"`` keeps the input for that call instead. Chosen so that gradients stay within the suite's
#: tolerance of a float64 reference (tests/tolerances.py) in float32, and so that ordinary layers (|z| of a few
#: units) never reach it: 1 + y = 2⁻⁵ is z ≈ −3.5.
ELU_MIN_SLOPE = 2.0**-5


class FusedForward(NamedTuple):
    """The training forward pass in float64: output, pre-activation, x̂ and the statistics (C,)."""

    y: Tensor  # act(z), float64
    z: Tensor  # γx̂ + β + r, float64
    xhat: Tensor  # x̂, float64
    mean: Tensor  # μ_B
    var: Tensor  # σ²_B, biased
    invstd: Tensor  # 1/√(σ²_B + ε)


class FusedGradients(NamedTuple):
    """∂ℓ/∂x, ∂ℓ/∂r (None without a residual), ∂ℓ/∂γ and ∂ℓ/∂β, all float64."""

    dx: Tensor
    dresidual: Tensor | None
    dweight: Tensor
    dbias: Tensor


# -------------------------------------------------------------------------------------------------- activations
def activate(z: Tensor, activation: str, negative_slope: float = 0.01) -> Tensor:
    """act(z) with torch's own definitions (ELU with α = 1)."""
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if activation == "silu":
        return F.silu(z)
    if activation == "elu":
        return F.elu(z)
    return z


def activation_grad(z: Tensor, activation: str, negative_slope: float = 0.01) -> Tensor:
    """act'(z), with torch's convention at the kink z = 0 (relu: 0, leaky_relu: negative_slope)."""
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "leaky_relu":
        # A tensor for the slope: torch.where of two Python floats is float32, which would round 0.1.
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, negative_slope))
    if activation == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if activation == "elu":
        return torch.where(z > 0, torch.ones_like(z), torch.exp(z))
    return torch.ones_like(z)


def invert_activation(y: Tensor, activation: str, negative_slope: float = 0.01) -> tuple[Tensor, Tensor]:
    """(z, act'(z)) recovered from y = act(z) for an invertible activation: the ``from_output`` backward."""
    if activation == "leaky_relu":
        positive = y > 0
        grad = torch.where(positive, torch.ones_like(y), torch.full_like(y, negative_slope))
        return torch.where(positive, y, y / negative_slope), grad
    if activation == "elu":
        positive = y > 0
        # z = log(1 + y) and act'(z) = eᶻ = 1 + y on the negative side.
        return torch.where(positive, y, torch.log1p(y)), torch.where(positive, torch.ones_like(y), y + 1)
    if activation == "identity":
        return y, torch.ones_like(y)
    raise ValueError(f"activation {activation!r} is not invertible; save='output' needs one of {INVERTIBLE}")


def output_determines_input(y: Tensor, weight: Tensor | None, activation: str) -> Tensor:
    """A 0-d bool tensor: True when x̂ can be recovered from y (``save="output"``) to working precision.

    False when a channel's γ is 0 (its output does not depend on x) or, for ELU, when an output lies within
    :data:`ELU_MIN_SLOPE` of the saturation at −1. Computed on y's device; reading it is the caller's choice.
    """
    ok = torch.ones((), dtype=torch.bool, device=y.device)
    if weight is not None:
        ok = ok & (weight != 0).all()
    if activation == "elu" and y.numel():
        ok = ok & (y.to(torch.float32).amin() + 1 >= ELU_MIN_SLOPE)
    return ok


# ------------------------------------------------------------------------------------------------------ phases
def _affine(weight: Tensor | None, bias: Tensor | None, like: Tensor, work: torch.dtype) -> tuple[Tensor, Tensor]:
    # γ = 1 and β = 0 where the layer has none, in the working dtype.
    channels = like.shape[1]
    gamma = torch.ones(channels, dtype=work, device=like.device) if weight is None else weight.to(work)
    beta = torch.zeros(channels, dtype=work, device=like.device) if bias is None else bias.to(work)
    return gamma, beta


def normalize(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(y, z, x̂): y = act(γ·(x − μ)·invstd + β + r) with given per-channel μ and invstd (C,), all float64.

    The elementwise phase: with the batch's statistics it is the training forward, with the population's the
    inference forward (Algorithm 2). ``dtype`` computes in another dtype instead (the composed backends' float32).
    """
    work = working_dtype(x) if dtype is None else dtype
    xw = x.to(work)
    gamma, beta = _affine(weight, bias, x, work)
    xhat = (xw - per_channel(mean.to(work), x)) * per_channel(invstd.to(work), x)  # x̂
    z = xhat * per_channel(gamma, x) + per_channel(beta, x)  # BN_{γ,β}(x)
    if residual is not None:
        z = z + residual.to(work)  # + r, in float64: the sum is rounded once, with y
    return activate(z, activation, negative_slope), z, xhat


def grad_and_xhat(grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None = None,
                  bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                  negative_slope: float = 0.01, from_output: bool = False,
                  dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """(∂ℓ/∂z, x̂) elementwise, float64 (or ``dtype``), from the saved x (``from_output=False``) or y."""
    work = working_dtype(saved) if dtype is None else dtype
    gamma, beta = _affine(weight, bias, saved, work)
    if from_output:
        z, slope = invert_activation(saved.to(work), activation, negative_slope)
        res = 0.0 if residual is None else residual.to(work)
        xhat = (z - per_channel(beta, saved) - res) / per_channel(gamma, saved)  # x̂ = (z − β − r)/γ
    else:
        _, z, xhat = normalize(saved, mean, invstd, weight, bias, residual, "identity", dtype=work)
        slope = activation_grad(z, activation, negative_slope)
    return grad_y.to(work) * slope, xhat  # ∂ℓ/∂z = ∂ℓ/∂y · act'(z), which is also ∂ℓ/∂r


def reduce_grads(dz: Tensor, xhat: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ ∂ℓ/∂z, Σ ∂ℓ/∂z·x̂) per channel: ∂ℓ/∂β and ∂ℓ/∂γ, and what the input gradient needs of the batch."""
    dims = reduction_dims(dz)
    return dz.sum(dims), (dz * xhat).sum(dims)


def input_grad(dz: Tensor, xhat: Tensor, invstd: Tensor, weight: Tensor | None, sum_dz: Tensor,
               sum_dz_xhat: Tensor, count: Tensor | float) -> Tensor:
    """∂ℓ/∂x = γ·invstd·(∂ℓ/∂z − Σ∂ℓ/∂z / m − x̂·Σ(∂ℓ/∂z·x̂) / m), the closed form of Algorithm 1's backward.

    ``count`` (m) and the two sums may be those of a larger batch than dz's own (synchronized batch norm).
    """
    work = dz.dtype
    gamma = dz.new_ones(dz.shape[1]) if weight is None else weight.to(work)
    m = count.to(work) if isinstance(count, Tensor) else float(count)
    scale = per_channel(gamma * invstd.to(work), dz)
    mean_dz = per_channel(sum_dz.to(work) / m, dz)
    mean_dz_xhat = per_channel(sum_dz_xhat.to(work) / m, dz)
    return scale * (dz - mean_dz - xhat * mean_dz_xhat)


# ------------------------------------------------------------------------------------------------ whole passes
def forward_train(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5,
                  residual: Tensor | None = None, activation: str = "identity",
                  negative_slope: float = 0.01) -> FusedForward:
    """act(BN(x) + r) with the batch's own statistics, float64 from start to end."""
    mean, var = mean_var(batch_moments(x, dtype=working_dtype(x)))  # μ_B, σ²_B (C,)
    invstd = torch.rsqrt(var + eps)
    y, z, xhat = normalize(x, mean, invstd, weight, bias, residual, activation, negative_slope)
    return FusedForward(y, z, xhat, mean, var, invstd)


def backward(grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None = None,
             bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
             negative_slope: float = 0.01, from_output: bool = False) -> FusedGradients:
    """Gradients of :func:`forward_train` from the saved x or y and the statistics μ_B, invstd (C,)."""
    dz, xhat = grad_and_xhat(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                             from_output)
    sum_dz, sum_dz_xhat = reduce_grads(dz, xhat)
    dx = input_grad(dz, xhat, invstd, weight, sum_dz, sum_dz_xhat, values_per_channel(saved))
    return FusedGradients(dx, None if residual is None else dz, sum_dz_xhat, sum_dz)


def forward_eval(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None = None,
                 bias: Tensor | None = None, eps: float = 1e-5, residual: Tensor | None = None,
                 activation: str = "identity", negative_slope: float = 0.01) -> Tensor:
    """act(BN(x) + r) with the population statistics E[x], Var[x] (Algorithm 2), float64."""
    work = working_dtype(x)
    invstd = torch.rsqrt(running_var.to(work) + eps)
    return normalize(x, running_mean.to(work), invstd, weight, bias, residual, activation, negative_slope)[0]
