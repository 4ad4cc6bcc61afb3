"""The fused contract: batch norm, a residual add and an activation as one operation.

    z = BN_{γ,β}(x) + r        (r, the residual, is optional)
    y = act(z)                 act ∈ ACTIVATIONS

A sibling of :class:`bnlab.kernels.base.Backend`: a backend that also subclasses :class:`FusedBackend` answers
the three calls below, and :class:`ReferenceFused` (plain torch ops over :mod:`bnlab.reference`) is the yardstick
every fused kernel is tested against. The caller's guarantees are those of ``base.py``, plus: ``residual`` is None
or has x's shape and dtype and is given in x's memory format.

The backward pass can start from either of two saved tensors:

- ``save="input"``: x is saved (and r, when there is one); z is recomputed from x and the statistics, so this
  works for every activation and keeps fewer bytes than PyTorch's unfused BN → act, which keeps x and BN(x).
- ``save="output"`` (InPlace-ABN's trick, for invertible activations): only y is saved (and r); the backward
  recovers z = act⁻¹(y), act'(z) from y, and x̂ = (z − β − r)/γ. Exact for γ ≠ 0 of either sign; where γ = 0
  x̂ cannot be recovered, which is why the caller (:mod:`bnlab.fused`) saves x instead in that case.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.kernels.base import Backend, TrainBackward, TrainForward
from bnlab.reference import algorithm1, algorithm2
from bnlab.reference.algorithm1 import accumulation_dtype, per_channel, reduction_dims, values_per_channel

ACTIVATIONS = ("identity", "relu", "leaky_relu", "silu", "elu")
#: Activations whose input can be recovered from their output (leaky_relu needs negative_slope > 0).
INVERTIBLE = ("identity", "leaky_relu", "elu")
#: Integer codes the kernels use for the activations (index into ACTIVATIONS).
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


class FusedBackward(NamedTuple):
    """Gradients of the fused operation: ∂ℓ/∂x, ∂ℓ/∂r (None when not asked for), ∂ℓ/∂γ and ∂ℓ/∂β."""

    dx: Tensor
    dresidual: Tensor | None
    dweight: Tensor
    dbias: Tensor


class FusedBackend(ABC):
    """A backend that computes act(BN(x) + r) in fused passes. Pair it with :class:`Backend` by inheritance."""

    @abstractmethod
    def fused_forward_train(self, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                            eps: float, activation: str, negative_slope: float) -> TrainForward:
        """y = act(BN(x) + r) with the batch's statistics; y in ``TrainForward.y``, statistics as in base.py."""

    @abstractmethod
    def fused_backward(self, grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, negative_slope: float,
                       from_output: bool, need_dresidual: bool) -> FusedBackward:
        """Gradients from the saved tensor: x (``from_output=False``) or y (``from_output=True``)."""

    @abstractmethod
    def fused_forward_eval(self, x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
                           weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
                           negative_slope: float) -> Tensor:
        """y = act(BN_eval(x) + r) with the population statistics (Algorithm 2)."""


class FusedKernelsBackend(Backend, FusedBackend):
    """A backend whose kernels are the fused ones: plain batch norm is the fused call with no residual and the
    identity activation (the ``cpu`` and ``triton`` backends)."""

    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> TrainForward:
        return self.fused_forward_train(x, None, weight, bias, eps, "identity", 0.0)

    def backward(self, grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                 invstd: Tensor) -> TrainBackward:
        g = self.fused_backward(grad_y, x, None, weight, None, mean, invstd, "identity", 0.0, False, False)
        return TrainBackward(g.dx, g.dweight, g.dbias)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float) -> Tensor:
        return self.fused_forward_eval(x, None, running_mean, running_var, weight, bias, eps, "identity", 0.0)


# ---------------------------------------------------------------------------------------- the reference math
def activate(z: Tensor, activation: str, negative_slope: float) -> Tensor:
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


def activation_grad(z: Tensor, activation: str, negative_slope: float) -> Tensor:
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
        return torch.where(z > 0, 1.0, torch.exp(z)).to(z.dtype)
    return torch.ones_like(z)


def invert_activation(y: Tensor, activation: str, negative_slope: float) -> tuple[Tensor, Tensor]:
    """(z, act'(z)) recovered from y = act(z) for an invertible activation: the save="output" backward."""
    if activation == "leaky_relu":
        positive = y > 0
        grad = torch.where(positive, torch.ones_like(y), torch.full_like(y, negative_slope))
        return torch.where(positive, y, y / negative_slope), grad
    if activation == "elu":
        positive = y > 0
        return torch.where(positive, y, torch.log1p(y)), torch.where(positive, 1.0, y + 1)
    if activation == "identity":
        return y, torch.ones_like(y)
    raise ValueError(f"activation {activation!r} is not invertible; save='output' needs one of {INVERTIBLE}")


class ReferenceFused(FusedBackend):
    """The fused operation in plain torch ops, unfused: the yardstick, any device and dtype."""

    def fused_forward_train(self, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                            eps: float, activation: str, negative_slope: float) -> TrainForward:
        r = algorithm1.forward_train(x, weight, bias, eps)
        z = r.y.to(r.xhat.dtype) if residual is None else r.y.to(r.xhat.dtype) + residual.to(r.xhat.dtype)
        y = activate(z, activation, negative_slope).to(x.dtype)
        return TrainForward(y, r.mean, r.invstd, r.var)

    def fused_backward(self, grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, negative_slope: float,
                       from_output: bool, need_dresidual: bool) -> FusedBackward:
        acc = accumulation_dtype(saved.dtype)
        channels, dims, m = saved.shape[1], reduction_dims(saved), values_per_channel(saved)
        gamma = saved.new_ones(channels, dtype=acc) if weight is None else weight.to(acc)
        beta = saved.new_zeros(channels, dtype=acc) if bias is None else bias.to(acc)
        res = 0.0 if residual is None else residual.to(acc)
        if from_output:
            z, grad = invert_activation(saved.to(acc), activation, negative_slope)
            xhat = (z - per_channel(beta, saved) - res) / per_channel(gamma, saved)  # x̂ = (z − β − r)/γ
        else:
            xhat = (saved.to(acc) - per_channel(mean.to(acc), saved)) * per_channel(invstd.to(acc), saved)
            z = xhat * per_channel(gamma, saved) + per_channel(beta, saved) + res
            grad = activation_grad(z, activation, negative_slope)
        dz = grad_y.to(acc) * grad  # ∂ℓ/∂z = ∂ℓ/∂y · act'(z); also ∂ℓ/∂r
        dbeta = dz.sum(dims)  # ∂ℓ/∂β = Σ ∂ℓ/∂z
        dgamma = (dz * xhat).sum(dims)  # ∂ℓ/∂γ = Σ ∂ℓ/∂z · x̂
        # The closed form of algorithm1.backward_compact, with x̂ given instead of recomputed from x.
        scale = per_channel(gamma * invstd.to(acc), saved)
        dx = scale * (dz - per_channel(dbeta, saved) / m - xhat * per_channel(dgamma, saved) / m)
        dres = dz.to(saved.dtype) if need_dresidual else None
        return FusedBackward(dx.to(saved.dtype), dres, dgamma, dbeta)

    def fused_forward_eval(self, x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
                           weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
                           negative_slope: float) -> Tensor:
        acc = accumulation_dtype(x.dtype)
        bn = algorithm2.forward_inference(x.to(acc), running_mean, running_var, weight, bias, eps)
        z = bn if residual is None else bn + residual.to(acc)
        return activate(z, activation, negative_slope).to(x.dtype)


REFERENCE_FUSED = ReferenceFused()
