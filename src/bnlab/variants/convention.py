"""Training and inference under another framework's batch-norm rules (``convention=`` on bnlab modules).

The spec and the per-class matrix are in docs/compat.md. In short, with m values per channel, σ²_B = M2/m and
s² = M2/(m − 1):

- "keras" and "flax" normalize as torch does and differ in the running variance: it averages the biased σ²_B
  (no Bessel factor), and a batch with one value per channel is allowed (σ²_B = 0, y = β). Eval is torch's.
- "darknet" (pjreddie's CPU layer, ``bnlab.reference.darknet``) normalizes with the *unbiased* s² and ε *outside*
  the root, x̂ = (x − μ_B)/(√s² + ε), in training; the running variance averages s² (as torch's does); eval is
  (x − r_μ)/(√r_v + ε). ε is the module's ``eps`` (darknet's own is 1e-6, ``compat.DARKNET.eps``); the running
  update is darknet's hard-coded .99/.01, torch's momentum 0.01, which the constructor insists on.

``momentum`` keeps torch's meaning on the module whatever the convention (the converters translate Keras's and
Flax's decay), so state_dicts and ``bnlab.tools`` read it alike. Each rule is a :class:`VariantCall` over the
backend phases (``stats`` → μ, M2; ``elemt`` with an invstd that encodes the root; the two backward phases), so
every backend serves it and no new kernel is needed: darknet's invstd is 1/(√s² + ε), and its exact gradient is
batch norm's with the Σ(dz·x̂) term scaled by c = m(s + ε)/((m − 1)s) (docs/compat.md derives it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._shapes import accumulation_dtype, per_channel, reduction_dims, values_per_channel
from bnlab.kernels.base import Backend, GradSums
from bnlab.reference.algorithm2 import inference_affine
from bnlab.variants.call import VariantCall, affine

__all__ = ["CONVENTIONS", "DARKNET_MOMENTUM", "BiasedVarianceCall", "DarknetCall", "DarknetRunningCall",
           "check_convention", "convention_inference_affine", "darknet_invstd"]

CONVENTIONS: tuple[str, ...] = ("torch", "keras", "flax", "darknet")
#: darknet's running update, rolling ← .99·rolling + .01·batch, as torch's momentum (the weight of the batch).
DARKNET_MOMENTUM = 0.01
#: Why a layer class that declares no conventions takes only torch's (see the per-class matrix in docs/compat.md).
TORCH_ONLY = ("only bnlab.BatchNorm1d/2d/3d and the fused BatchNormAct1d/2d/3d follow another framework's "
              "convention; build the plain layer with convention=... instead")


def check_convention(convention: object, momentum: float | None = DARKNET_MOMENTUM, layer: str = "the layer",
                     accepted: tuple[str, ...] = CONVENTIONS, why_not: str = TORCH_ONLY) -> None:
    """Raise a clear ``ValueError`` if ``layer`` cannot follow ``convention`` with this ``momentum``.

    Args:
        convention: the value given to ``convention=``.
        momentum: the layer's momentum (torch's meaning); under "darknet" it must be 0.01, darknet's hard-coded
            weight of the batch (its rolling update is .99/.01 whatever the config says).
        layer: the layer's class name, for the message.
        accepted: the conventions that layer class follows; ``why_not`` says why the others are refused.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention not in accepted:
        raise ValueError(f"{layer} does not take convention={convention!r}: {why_not}")
    if convention == "darknet" and (momentum is None or not math.isclose(momentum, DARKNET_MOMENTUM,
                                                                         rel_tol=1e-6)):
        raise ValueError(f"convention='darknet' hard-codes darknet's running update rolling ← .99·rolling + "
                         f".01·batch, which is momentum={DARKNET_MOMENTUM} in torch's meaning; got "
                         f"momentum={momentum!r}: pass momentum={DARKNET_MOMENTUM} (bnlab.compat.from_darknet "
                         f"builds darknet's layer with its ε and start)")


def darknet_invstd(var: Tensor, eps: float) -> Tensor:
    """1/(√var + ε), darknet's normalizing factor (ε outside the root), elementwise."""
    return 1.0 / (var.sqrt() + eps)


def convention_inference_affine(mean: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float,
                                convention: str) -> tuple[Tensor, Tensor]:
    """(scale, shift) of the eval map y = scale·x + shift per channel under ``convention``.

    torch, Keras and Flax: γ/√(r_v + ε) (Algorithm 2, line 11); darknet: γ/(√r_v + ε). Computed in the dtype of
    the statistics (at least float32); ``bnlab.fold`` passes float64.
    """
    if convention != "darknet":
        return tuple(inference_affine(mean, var, gamma, beta, eps))  # type: ignore[return-value]
    scale = darknet_invstd(var, eps)
    if gamma is not None:
        scale = gamma.to(scale.dtype) * scale
    shift = -mean * scale
    return scale, shift if beta is None else beta.to(shift.dtype) + shift


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


class DarknetCall(VariantCall):
    """darknet's training step: x̂ = (x − μ_B)/(√s² + ε) with the unbiased s²; the running variance averages s².

    The backward is the exact gradient of this forward (darknet's own C backward is not: it uses ε = 1e-5 inside
    the root and 1/m, ``bnlab.reference.darknet``). With r = 1/(s + ε) and x̂ as above,

        ∂ℓ/∂x = γ·r·(dz − Σdz/m − x̂·Σ(dz·x̂)/m · c),   c = m(s + ε)/((m − 1)s),

    i.e. the backend's ``backward_elemt`` with Σ(dz·x̂) scaled by c; ∂ℓ/∂γ = Σ(dz·x̂), ∂ℓ/∂β = Σdz as in batch norm.
    A channel with s = 0 (all values equal) has x̂ = 0 and gets c = 0 there: dx = γ·r·(dz − Σdz/m), the limit
    along which √ is differentiable (autograd of the formula would give 0·∞ = NaN).
    """

    min_values = 2  # s² divides by m − 1

    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        moments = backend.stats(x)
        self.mean = moments.mean
        self.count = moments.count
        self.var = moments.m2 / (moments.count - 1)  # s², unbiased: what darknet normalizes with and stores
        self.invstd = darknet_invstd(self.var, self.eps)
        return backend.elemt(x, self.mean, self.invstd, weight, bias)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        sums = backend.backward_reduce(grad_y, x, self.mean, self.invstd, weight, bias)
        s = self.var.sqrt()
        m = self.count
        c = torch.where(s > 0, m * (s + self.eps) / ((m - 1) * s.clamp_min(torch.finfo(s.dtype).tiny)), 0.0)
        scaled = GradSums(sums.sum_dz, sums.sum_dz_xhat * c)
        dx, _ = backend.backward_elemt(grad_y, x, self.mean, self.invstd, weight, bias, scaled,
                                       values_per_channel(x))
        return dx, sums.sum_dz_xhat, sums.sum_dz

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        xw = x.to(accumulation_dtype(x.dtype))
        dims = reduction_dims(x)
        m = values_per_channel(x)
        mean = xw.mean(dims)
        centred = xw - per_channel(mean, xw)
        var = centred.square().sum(dims) / (m - 1)
        self.mean, self.var = mean.detach(), var.detach()
        return affine(centred / per_channel(var.sqrt() + self.eps, xw), weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        _stats.update_running_stats(running_mean, running_var, self.mean, self.var, 1, factor, unbiased=True)


class BatchUpdate(NamedTuple):
    """A batch's μ_B and s² (unbiased), for a running update after normalizing with the running statistics."""

    mean: Tensor
    var: Tensor


class DarknetRunningCall(VariantCall):
    """darknet's eval transform, y = γ·(x − r_μ)/(√r_v + ε) + β, as a call over the phases (``elemt``).

    The running statistics are constants: ∂ℓ/∂x = γ·dz/(√r_v + ε), ∂ℓ/∂γ = Σ(dz·x̂), ∂ℓ/∂β = Σdz. With
    ``update_from_batch`` (``bnlab.freeze(normalize_with="running", update_stats=True)``) the batch's μ_B and s²
    are also taken, and :meth:`update` folds them into the running statistics after the output is computed.
    """

    min_values = 1

    def __init__(self, eps: float, running_mean: Tensor, running_var: Tensor, update_from_batch: bool = False) -> None:
        super().__init__(eps)
        self.running_mean, self.running_var = running_mean, running_var
        self.update_from_batch = update_from_batch
        self.batch: BatchUpdate | None = None

    def _constants(self, x: Tensor) -> tuple[Tensor, Tensor]:
        acc = accumulation_dtype(x.dtype)
        # Copies: an update after the forward must not change what the backward normalizes with.
        mean = self.running_mean.detach().to(acc, copy=True)
        return mean, darknet_invstd(self.running_var.detach().to(acc), self.eps)

    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        self.mean, self.invstd = self._constants(x)
        if self.update_from_batch:
            moments = backend.stats(x)
            self.batch = BatchUpdate(moments.mean, moments.m2 / (moments.count - 1).clamp_min(1))
        return backend.elemt(x, self.mean, self.invstd, weight, bias)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        sums = backend.backward_reduce(grad_y, x, self.mean, self.invstd, weight, bias)
        none = GradSums(torch.zeros_like(sums.sum_dz), torch.zeros_like(sums.sum_dz_xhat))  # no statistics path
        dx, _ = backend.backward_elemt(grad_y, x, self.mean, self.invstd, weight, bias, none, values_per_channel(x))
        return dx, sums.sum_dz_xhat, sums.sum_dz

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        xw = x.to(accumulation_dtype(x.dtype))
        mean, invstd = self._constants(x)
        if self.update_from_batch:
            dims = reduction_dims(x)
            batch_mean = xw.detach().mean(dims)
            m = values_per_channel(x)
            self.batch = BatchUpdate(batch_mean, (xw.detach() - per_channel(batch_mean, xw)).square().sum(dims)
                                     / max(m - 1, 1))
        return affine((xw - per_channel(mean, xw)) * per_channel(invstd, xw), weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        if self.batch is not None:
            _stats.update_running_stats(running_mean, running_var, self.batch.mean, self.batch.var, 1, factor,
                                        unbiased=True)
