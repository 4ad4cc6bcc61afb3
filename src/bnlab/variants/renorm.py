"""Batch Renormalization (Ioffe, 2017) over the backend phases, and its schedules.

In training, with σ_B = √(σ²_B + ε) and σ = √(running_var + ε) taken before this batch's update,

    r = clip(σ_B / σ, 1/r_max, r_max),   d = clip((μ_B − μ) / σ, −d_max, d_max)      (constants in backward)
    y = γ·((x − μ_B)/σ_B · r + d) + β

which is the phases' ``elemt`` with the shifted centre μ_B − d·σ_B/r and the scale r/σ_B. Its backward is batch
norm's with γ·r in place of γ (r and d are constants): ∂ℓ/∂x = γ·r/σ_B·(dy − Σdy/m − x̂·Σ(dy·x̂)/m), and
∂ℓ/∂γ = r·Σ(dy·x̂) + d·Σdy, ∂ℓ/∂β = Σdy. r_max = 1, d_max = 0 give batch norm; r_max = d_max = ∞ give
γ·(x − μ)/σ + β, the inference transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._shapes import accumulation_dtype, per_channel, reduction_dims, values_per_channel
from bnlab.kernels.base import Backend
from bnlab.variants.call import VariantCall, affine

__all__ = ["Bound", "RenormCall", "RenormSchedule", "check_bound", "renorm_schedule"]

#: r_max or d_max: a number, or a function of the step count (a 0-d int64 tensor, the batches seen before this
#: one) returning a number or a 0-d tensor, e.g. a :class:`RenormSchedule`.
Bound = float | Callable[[Tensor], "Tensor | float"]


@dataclass(frozen=True)
class RenormSchedule:
    """A bound that stays at ``start`` for ``warmup`` steps, then moves linearly to ``end`` at step ``reach``.

    Evaluated on the step tensor with torch ops, so a schedule needs no host synchronisation on an accelerator.
    """

    start: float
    end: float
    warmup: int
    reach: int

    def __post_init__(self) -> None:
        if not 0 <= self.warmup < self.reach:
            raise ValueError(f"a renorm schedule needs 0 <= warmup < reach, got warmup={self.warmup}, "
                             f"reach={self.reach}")

    def __call__(self, step: Tensor) -> Tensor:
        progress = ((step.to(torch.float64) - self.warmup) / (self.reach - self.warmup)).clamp(0.0, 1.0)
        return self.start + (self.end - self.start) * progress


def renorm_schedule(warmup: int = 5000, r_max_reach: int = 40000,
                    d_max_reach: int = 25000) -> tuple[RenormSchedule, RenormSchedule]:
    """The paper's schedules (Ioffe 2017, section 4.1): ``(r_max, d_max)`` for ``BatchRenorm*d(r_max=, d_max=)``.

    r_max is 1 and d_max 0 (batch norm) for the first ``warmup`` steps; then r_max rises linearly to 3 at step
    ``r_max_reach`` and d_max to 5 at step ``d_max_reach``. Steps count the layer's training batches.
    """
    return RenormSchedule(1.0, 3.0, warmup, r_max_reach), RenormSchedule(0.0, 5.0, warmup, d_max_reach)


def check_bound(name: str, value: object, least: float) -> None:
    """A float bound must be a number ≥ ``least`` (1 for r_max, 0 for d_max, ∞ allowed); a callable passes."""
    if callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < least:
        raise ValueError(f"{name} must be a number >= {least:g} (math.inf for no bound) or a schedule of the step "
                         f"count (bnlab.nn.renorm_schedule), got {value!r}")


def _evaluate(bound: Bound, step: Tensor, like: Tensor) -> Tensor | float:
    if not callable(bound):
        return float(bound)
    value = bound(step)
    return value.to(like) if isinstance(value, Tensor) else float(value)


def _corrections(mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
                 r_max: Tensor, d_max: Tensor) -> tuple[Tensor, Tensor]:
    """(r, d) of batch renorm, per channel, in mean's dtype."""
    rm, rv = running_mean.to(mean.dtype), running_var.to(mean.dtype)
    sigma = torch.sqrt(rv + eps)
    r = torch.minimum(torch.maximum(torch.sqrt(var + eps) / sigma, 1.0 / r_max), r_max)
    d = torch.minimum(torch.maximum((mean - rm) / sigma, -d_max), d_max)
    return r, d


@torch.library.custom_op("bnlab::renorm_corrections", mutates_args=())
def corrections_op(mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
                   r_max: Tensor, d_max: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_corrections` as an opaque op, for torch.compile.

    Under torch.compile the running buffers are updated in place after the forward, and aot_autograd's
    partitioners recompute cheap torch ops in the backward from the graph's inputs, which would then read the
    updated buffers (the gradient came out with the wrong r). An op the partitioner does not recompute keeps
    r and d those of the forward: they are saved instead.
    """
    return _corrections(mean, var, running_mean, running_var, eps, r_max, d_max)


@corrections_op.register_fake
def _corrections_fake(mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
                      r_max: Tensor, d_max: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(mean), torch.empty_like(mean)


class RenormCall(VariantCall):
    """One training call of batch renorm: ``running_mean``/``running_var`` as they were before this batch."""

    def __init__(self, eps: float, running_mean: Tensor, running_var: Tensor, r_max: Bound, d_max: Bound,
                 step: Tensor) -> None:
        super().__init__(eps)
        self.running_mean, self.running_var = running_mean, running_var
        self.r_max, self.d_max, self.step = r_max, d_max, step
        self.r: Tensor | None = None
        self.d: Tensor | None = None

    def _corrections(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        # r and d from the running statistics before this batch's update; detached: constants in backward.
        mean, var = mean.detach(), var.detach()
        r_max = torch.as_tensor(_evaluate(self.r_max, self.step, mean), dtype=mean.dtype, device=mean.device)
        d_max = torch.as_tensor(_evaluate(self.d_max, self.step, mean), dtype=mean.dtype, device=mean.device)
        # Eager mode calls the function itself (a custom op's dispatch costs tens of microseconds).
        op = corrections_op if torch.compiler.is_compiling() else _corrections
        return op(mean, var, self.running_mean, self.running_var, self.eps, r_max, d_max)



    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        self.count = values_per_channel(x)
        moments = backend.stats(x)
        self.mean, self.var = _stats.mean_var(moments)
        self.invstd = torch.rsqrt(self.var + self.eps)
        self.r, self.d = self._corrections(self.mean, self.var)
        # (x − μ_B)/σ_B·r + d = (x − (μ_B − d·σ_B/r))·(r/σ_B): elemt with a shifted centre and scale.
        scale = self.invstd * self.r
        return backend.elemt(x, self.mean - self.d / scale, scale, weight, bias)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        assert self.r is not None and self.d is not None
        sums = backend.backward_reduce(grad_y, x, self.mean, self.invstd, weight, bias)
        gamma_r = self.r if weight is None else weight * self.r
        dx, _ = backend.backward_elemt(grad_y, x, self.mean, self.invstd, gamma_r, bias, sums,
                                       values_per_channel(x))
        return dx, self.r * sums.sum_dz_xhat + self.d * sums.sum_dz, sums.sum_dz

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        self.count = values_per_channel(x)
        xw = x.to(accumulation_dtype(x.dtype))
        dims = reduction_dims(x)
        mean = xw.mean(dims)
        var = (xw - per_channel(mean, xw)).square().mean(dims)
        if self.r is None or self.d is None:  # first use (compiled); a double backward reuses the forward's
            self.mean, self.var = mean.detach(), var.detach()
            self.r, self.d = self._corrections(mean, var)
        xhat = (xw - per_channel(mean, xw)) * per_channel(torch.rsqrt(var + self.eps) * self.r, xw)
        return affine(xhat + per_channel(self.d, xw), weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        _stats.update_running_stats(running_mean, running_var, self.mean, self.var, self.count, factor)
