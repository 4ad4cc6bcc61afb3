"""``batch_norm_act``: act(BN(x) + residual) as one operation, with a choice of what to save for backward.

The computation lives behind the fused contract (:mod:`bnlab.kernels.fused`); this module checks arguments,
picks the implementation, carries autograd, and updates running statistics through :mod:`bnlab._stats`.

Which implementation runs:

- a backend that implements the fused contract (``cpu``, ``triton``; ``reference`` through
  :class:`~bnlab.kernels.fused.ReferenceFused`) runs the fused kernels;
- any other backend (``native``) runs unfused: its batch norm, then ``+ residual`` and the activation as torch ops,
  which is exactly PyTorch's own sequence. ``save="output"`` needs fused kernels, so under ``"auto"`` it takes the
  best available fused backend instead.

What is saved for backward (``save``):

- ``"input"`` (default): x (and the residual, if any). z = γx̂ + β + r is recomputed in backward, so BN + act keeps
  one activation-sized tensor where PyTorch's unfused sequence keeps two (BN's input and the activation's).
- ``"output"``: y (and the residual, if any), for invertible activations (identity, leaky_relu with
  negative_slope > 0, elu). The backward recovers z = act⁻¹(y) and x̂ = (z − β − r)/γ, so the layer keeps only
  the tensor the next layer keeps anyway. **γ = 0**: x̂ cannot be recovered from y where a channel's γ is exactly
  zero (that channel's output does not depend on x). The gradients stay exact: a call whose γ has a zero saves x
  instead of y (as ``"input"`` does) and logs this once. Small but non-zero |γ| is exact in exact arithmetic;
  in floating point x̂ then carries an error of about ulp(y)/|γ| (times 1/negative_slope on leaky_relu's negative
  side), which in bfloat16 or float16 is coarse: prefer ``"input"`` there.

Double backward (``create_graph=True``) differentiates the paper's formulas with autograd from the saved input;
with ``save="output"`` the input is gone, and it raises saying so.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_batch_norm_args
from bnlab.functional import _batch_norm
from bnlab.kernels import AUTO, ENV_VAR, available_backends, get_backend, resolve
from bnlab.kernels.base import memory_format_of
from bnlab.kernels.fused import ACTIVATIONS, INVERTIBLE, REFERENCE_FUSED, FusedBackend, activate
from bnlab.kernels.registry import env_override
from bnlab.reference import algorithm1
from bnlab.reference.algorithm1 import accumulation_dtype, values_per_channel

__all__ = ["SAVE_MODES", "batch_norm_act", "check_act_args"]

logger = logging.getLogger("bnlab.fused")
SAVE_MODES = ("input", "output")
_warned: set[str] = set()  # reasons already logged, so each is logged once


def check_act_args(activation: str, negative_slope: float, save: str) -> None:
    """Validate the fused layer's own arguments; ValueError saying what is allowed."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    if save not in SAVE_MODES:
        raise ValueError(f"save must be one of {SAVE_MODES}, got {save!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, int | float):
        raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
    if save == "output":
        if activation not in INVERTIBLE:
            raise ValueError(
                f"save='output' recovers the input from the output, which needs an invertible activation "
                f"{INVERTIBLE}; {activation!r} is not: use save='input'"
            )
        if activation == "leaky_relu" and negative_slope <= 0:
            raise ValueError(
                f"save='output' with leaky_relu needs negative_slope > 0 to invert it, got {negative_slope}; "
                f"use save='input'"
            )


def fused_impl(name: str) -> FusedBackend | None:
    """The fused implementation of the backend called ``name``, or None where it only has plain batch norm."""
    if name == "reference":
        return REFERENCE_FUSED
    backend = get_backend(name)
    return backend if isinstance(backend, FusedBackend) else None


def _choose(backend: str, x: Tensor, training: bool, save: str, fused: bool) -> tuple[str, FusedBackend | None]:
    chosen = resolve(backend, x.device, x.dtype, x.numel(), training, fused,
                     memory_format_of(x) is not torch.contiguous_format)
    impl = fused_impl(chosen.name)
    if impl is None and save == "output":
        if backend != AUTO or env_override() is not None:
            source = f"backend={backend!r}" if backend != AUTO else f"${ENV_VAR}={env_override()}"
            raise ValueError(
                f"save='output' needs fused kernels, which backend {chosen.name!r} ({source}) does not have; use "
                f"one of {[n for n in available_backends(x.device, x.dtype) if fused_impl(n)]}"
            )
        name = next(n for n in available_backends(x.device, x.dtype) if fused_impl(n) is not None)
        return name, fused_impl(name)
    return chosen.name, impl


def _output_is_invertible(y: Tensor, weight: Tensor | None, activation: str) -> str | None:
    """None when x̂ can be recovered from y, else why not (then the input is saved instead)."""
    if weight is not None and bool((weight == 0).any()):
        return "a channel's weight (γ) is 0, so its output does not depend on x"
    # ELU saturates: where y rounds to exactly −1, z = log(1 + y) is −∞ and 0·∞ would poison γ's gradient.
    if activation == "elu" and bool((y <= -1).any()):
        return "an ELU output saturated at −1, where its input cannot be recovered"
    return None


class _FusedTrain(torch.autograd.Function):
    """Training-mode act(BN(x) + r) over a fused implementation; saves x or y as asked."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, residual: Tensor | None, weight: Tensor | None,  # type: ignore[override]
                bias: Tensor | None, eps: float, activation: str, slope: float, save: str,
                name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        impl = fused_impl(name)
        assert impl is not None  # _choose gave a fused backend
        y, mean, invstd, var = impl.fused_forward_train(x, residual, weight, bias, eps, activation, slope)
        from_output = save == "output"
        if from_output:
            why_not = _output_is_invertible(y, weight, activation)
            if why_not is not None:
                from_output = False
                if why_not not in _warned:
                    _warned.add(why_not)
                    logger.warning("bnlab: save='output' keeps the input for calls where %s; gradients stay exact",
                                   why_not)
        ctx.save_for_backward(y if from_output else x, residual, weight, bias, mean, invstd)
        ctx.mark_non_differentiable(mean, invstd, var)
        ctx.config = (activation, slope, from_output, name, eps)
        return y, mean, invstd, var

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        saved, residual, weight, bias, mean, invstd = ctx.saved_tensors
        activation, slope, from_output, name, _ = ctx.config
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_y, saved, residual, weight, bias, from_output)
        impl = fused_impl(name)
        assert impl is not None
        need_dres = residual is not None and ctx.needs_input_grad[1]
        g = impl.fused_backward(grad_y, saved, residual, weight, bias, mean, invstd, activation, slope,
                                from_output, need_dres)
        dweight = g.dweight if weight is not None and ctx.needs_input_grad[2] else None
        dbias = g.dbias if bias is not None and ctx.needs_input_grad[3] else None
        return g.dx, g.dresidual, dweight, dbias, None, None, None, None, None


def _differentiable_backward(ctx: Any, grad_y: Tensor, saved: Tensor, residual: Tensor | None,
                             weight: Tensor | None, bias: Tensor | None, from_output: bool) -> tuple[Any, ...]:
    # create_graph=True: recompute act(BN(x) + r) with the paper's formulas in differentiable ops and let
    # autograd take the gradient, so second derivatives exist (as for plain batch norm in bnlab.ops).
    if from_output:
        raise RuntimeError(
            "double backward (create_graph=True) through a fused layer with save='output' is not possible: the "
            "input was not kept; use save='input' for this layer"
        )
    activation, slope, _, _, eps = ctx.config
    inputs = [t for t in (saved, residual, weight, bias) if t is not None and t.requires_grad]
    with torch.enable_grad():
        z = algorithm1.forward_train(saved, weight, bias, eps).y
        y = activate(z if residual is None else z + residual, activation, slope)
        grads = iter(torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True))
    return (*(next(grads) if t is not None and t.requires_grad else None for t in (saved, residual, weight, bias)),
            None, None, None, None, None)


def batch_norm_act(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5, *, residual: Tensor | None = None,
                   activation: str = "relu", negative_slope: float = 0.01, save: str = "input",
                   backend: str = "auto") -> Tensor:
    """act(batch_norm(input) + residual), with :func:`bnlab.functional.batch_norm`'s arguments and semantics.

    Args:
        input: (N, C, *) float tensor; residual: None or a tensor of the same shape, dtype and device.
        activation: one of ``ACTIVATIONS`` (``elu`` has α = 1); negative_slope: leaky_relu's slope (0.01).
        save: ``"input"`` or ``"output"`` (see the module docstring).
        backend: ``"auto"`` or a backend name, as for ``batch_norm``.

    Returns:
        A tensor with the input's shape, dtype and memory format.
    """
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise TypeError(f"momentum must be a number, got {momentum!r}; for the cumulative average use "
                        f"bnlab.nn.BatchNormAct*d(momentum=None)")
    return _batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, residual,
                           activation, negative_slope, save, backend)


def _check_residual(input: Tensor, residual: Tensor | None) -> None:
    if residual is None:
        return
    if not isinstance(residual, Tensor):
        raise TypeError(f"residual must be a tensor or None, got {type(residual).__name__}")
    if residual.shape != input.shape or residual.dtype != input.dtype or residual.device != input.device:
        raise ValueError(
            f"residual must match the input: got {tuple(residual.shape)} {residual.dtype} on {residual.device} "
            f"for an input of {tuple(input.shape)} {input.dtype} on {input.device}"
        )


def _batch_norm_act(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None, bias: Tensor | None, training: bool, factor: float | Tensor, eps: float,
                    residual: Tensor | None, activation: str, negative_slope: float, save: str,
                    backend: str) -> Tensor:
    """``batch_norm_act`` with the averaging factor given directly (a tensor for the cumulative average)."""
    check_act_args(activation, negative_slope, save)
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    _check_residual(input, residual)
    slope = float(negative_slope)
    # Eval with gradients runs unfused (below), so only then is the work beyond batch norm done apart.
    eval_needs_grad = not training and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, residual, weight, bias))
    fused = (residual is not None or activation != "identity") and not eval_needs_grad
    name, impl = _choose(backend, input, training, save, fused)
    if impl is None or input.numel() == 0 or torch.compiler.is_compiling():
        # Unfused: the chosen backend's batch norm (running statistics included), then torch's own ops.
        y = _batch_norm(input, running_mean, running_var, weight, bias, training, factor, eps, name)
        return activate(y if residual is None else y + residual, activation, slope)
    acc = accumulation_dtype(input.dtype)
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    if training:
        y, mean, _, var = _FusedTrain.apply(input, residual, w, b, eps, activation, slope, save, name)
        _stats.update_running_stats(running_mean, running_var, mean, var, values_per_channel(input), factor)
        return y
    assert running_mean is not None and running_var is not None  # checked above
    if eval_needs_grad:
        # Inference BN is an affine map; the unfused ops give autograd (and double backward) for free.
        z = _batch_norm(input, running_mean, running_var, weight, bias, False, factor, eps, name)
        return activate(z if residual is None else z + residual, activation, slope)
    return impl.fused_forward_eval(input, residual, running_mean.to(acc), running_var.to(acc), w, b, eps,
                                   activation, slope)
