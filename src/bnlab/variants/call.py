"""What a batch-norm variant is to the rest of bnlab: a :class:`VariantCall`, run by one autograd Function.

A variant (batch renorm, ghost batch norm, masked batch norm) is a different arrangement of the backend phases
(:mod:`bnlab.kernels.base`) in a training step. Each training call builds one :class:`VariantCall` holding what
that call needs (ε, the variant's settings, the running statistics it reads), which answers three things:

- :meth:`VariantCall.forward`: y from the phases, keeping what backward and the running update need;
- :meth:`VariantCall.backward`: (∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β) from the backward phases;
- :meth:`VariantCall.formula`: the same forward in differentiable torch ops at the accumulation dtype.

:func:`train` runs the phases in eager mode through :class:`_VariantFunction`, so the cpu and Triton kernels serve
every variant. The formula is used where the phases cannot be: under ``torch.compile`` (dynamo traces torch ops
and inductor fuses them; the backends' C++ and Triton launches are not traceable without a custom op per variant)
and for double backward (``create_graph=True``), where autograd differentiates the formula, recomputed from the
saved input with the constants of the forward (batch renorm's r and d). Running statistics are then updated once
per call by :meth:`VariantCall.update`, through :mod:`bnlab._stats`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from bnlab._shapes import accumulation_dtype, memory_format_of, per_channel
from bnlab.kernels.base import Backend

__all__ = ["VariantCall", "affine", "train"]


class VariantCall(ABC):
    """One training call of a batch-norm variant; see the module docstring. ``eps``: ε added to variances."""

    #: The fewest values per channel a training batch may have (Keras and Flax allow one: σ²_B = 0).
    min_values = 2

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def check(self, x: Tensor) -> None:  # noqa: B027 (most variants need nothing beyond the shared checks)
        """Raise a clear error before anything changes if this variant cannot normalize ``x``."""

    @abstractmethod
    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """y over the backend's phases; keeps what :meth:`backward` and :meth:`update` need on ``self``."""

    @abstractmethod
    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β) after :meth:`forward`; the parameter gradients as if γ = 1, β = 0 when absent."""

    @abstractmethod
    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """The forward in differentiable torch ops (also keeps what :meth:`update` needs, detached)."""

    @abstractmethod
    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        """Fold this call's statistics into the running buffers (in place), after a forward."""


class _VariantFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, call: VariantCall, backend: Backend, x: Tensor,  # type: ignore[override]
                weight: Tensor | None, bias: Tensor | None) -> Tensor:
        ctx.call, ctx.backend = call, backend
        ctx.save_for_backward(x, weight, bias)
        return call.forward(backend, x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        if torch.is_grad_enabled():
            # create_graph=True: differentiate the formula, so that second derivatives exist.
            leaves = (x, weight, bias)
            inputs = [t for t, n in zip(leaves, need, strict=True) if t is not None and n]
            with torch.enable_grad():
                y = ctx.call.formula(x, weight, bias)
                grads = iter(torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True))
            dx, dw, db = (next(grads) if t is not None and n else None for t, n in zip(leaves, need, strict=True))
        else:
            dx, dw, db = ctx.call.backward(ctx.backend, grad_y, x, weight, bias)
        return (None, None, dx if need[0] else None, dw if weight is not None and need[1] else None,
                db if bias is not None and need[2] else None)


def train(call: VariantCall, chosen: Backend | Tensor, x: Tensor, weight: Tensor | None,
          bias: Tensor | None) -> Tensor:
    """y of a training call of ``call``'s variant; the caller then runs ``call.update``.

    ``chosen``: the resolved backend (eager), or a backend id tensor under ``torch.compile`` (then the formula).
    γ and β are cast to the accumulation dtype (a differentiable cast: a half module's gradients come back in half).
    """
    acc = accumulation_dtype(x.dtype)
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    if isinstance(chosen, Tensor) or torch.compiler.is_compiling():
        return call.formula(x, w, b)
    return _VariantFunction.apply(call, chosen, x, w, b)


def affine(xhat: Tensor, weight: Tensor | None, bias: Tensor | None, like: Tensor) -> Tensor:
    """γ·x̂ + β for a formula, rounded once to ``like``'s dtype, in its memory format."""
    y = xhat if weight is None else xhat * per_channel(weight, xhat)
    y = y if bias is None else y + per_channel(bias, xhat)
    return y.to(like.dtype).contiguous(memory_format=memory_format_of(like))
