"""Autograd over the backend contract, registered as ``torch.library`` custom ops.

Two ops carry the computation: ``bnlab::train_forward`` (Algorithm 1, with its backward ``bnlab::train_backward``)
and ``bnlab::eval_forward`` (Algorithm 2). Each has a fake (meta) implementation, so ``torch.compile`` with
``fullgraph=True`` sees through them, and one autograd definition (a ``setup_context`` and a ``backward``).

That autograd definition serves three callers, all running the same backend code: the custom op, which is
what ``torch.compile`` traces; a ``torch.autograd.Function`` that plain eager mode calls, because dispatching
through a Python custom op costs about 70 µs per forward+backward on CPU (this Function about 20 µs), which
would make small layers slower than PyTorch's; and the same Function in the ``setup_context`` form that
functorch transforms (``torch.func.grad``) require.

Double backward (``create_graph=True``) differentiates the paper's formulas (:mod:`bnlab.reference`) with
autograd, for every backend.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab.kernels import get_backend, memory_format_of
from bnlab.reference import algorithm1
from bnlab.reference.algorithm1 import accumulation_dtype, per_channel, reduction_dims

TrainOutputs = tuple[Tensor, Tensor, Tensor, Tensor]


# ---------------------------------------------------------------------------------------------- the computation
def _train_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                   backend: str) -> TrainOutputs:
    fmt = memory_format_of(x)
    if x.numel() == 0:
        # An empty batch has no statistics: torch returns an empty output and leaves running stats alone.
        stats = x.new_zeros(x.shape[1], dtype=accumulation_dtype(x.dtype))
        return torch.empty_like(x, memory_format=fmt), stats, stats.clone(), stats.clone()
    y, mean, invstd, var = get_backend(backend).forward_train(x, weight, bias, eps)
    return y.contiguous(memory_format=fmt), mean, invstd, var


def _train_backward(grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    fmt = memory_format_of(x)
    if x.numel() == 0:
        zeros = x.new_zeros(x.shape[1], dtype=accumulation_dtype(x.dtype))
        return torch.empty_like(x, memory_format=fmt), zeros, zeros.clone()
    dx, dweight, dbias = get_backend(backend).backward(grad_y, x, weight, mean, invstd)
    return dx.contiguous(memory_format=fmt), dweight, dbias


def _eval_forward(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                  bias: Tensor | None, eps: float, backend: str) -> Tensor:
    fmt = memory_format_of(x)
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=fmt)
    y = get_backend(backend).forward_eval(x, running_mean, running_var, weight, bias, eps)
    return y.contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------------- the custom ops
@torch.library.custom_op("bnlab::train_forward", mutates_args=())
def train_forward_op(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                     backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, μ_B, 1/√(σ²_B+ε), σ²_B) for a training-mode batch norm; see :class:`bnlab.kernels.TrainForward`."""
    return _train_forward(x, weight, bias, eps, backend)


@train_forward_op.register_fake
def _train_forward_fake(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                        backend: str) -> TrainOutputs:
    acc = accumulation_dtype(x.dtype)
    y = torch.empty_like(x, memory_format=memory_format_of(x))
    return y, x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc), x.new_empty(
        x.shape[1], dtype=acc)


@torch.library.custom_op("bnlab::train_backward", mutates_args=())
def train_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β) of the training forward, from the saved statistics."""
    return _train_backward(grad_y, x, weight, mean, invstd, backend)


@train_backward_op.register_fake
def _train_backward_fake(grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(x.dtype)
    dx = torch.empty_like(x, memory_format=memory_format_of(x))
    return dx, x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


@torch.library.custom_op("bnlab::eval_forward", mutates_args=())
def eval_forward_op(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                    bias: Tensor | None, eps: float, backend: str) -> Tensor:
    """Inference-mode batch norm with population statistics (Algorithm 2)."""
    return _eval_forward(x, running_mean, running_var, weight, bias, eps, backend)


@eval_forward_op.register_fake
def _eval_forward_fake(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                       bias: Tensor | None, eps: float, backend: str) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format_of(x))


# ------------------------------------------------------------------------------------------------- autograd
def _setup_train(ctx: Any, inputs: tuple[Any, ...], output: TrainOutputs, *, compiled: bool = False) -> None:
    x, weight, bias, eps, backend = inputs
    _, mean, invstd, var = output
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.eps, ctx.backend, ctx.has_bias = eps, backend, bias is not None
    ctx.compiled = compiled  # the backward of a compiled graph must call the op, not the Python directly


def _backward_train(ctx: Any, grad_y: Tensor, *unused_stat_grads: Any) -> tuple[Any, ...]:
    x, weight, mean, invstd = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: the paper's chain rule in differentiable ops gives second derivatives too.
        dx, dweight, dbias = algorithm1.backward_paper(grad_y, x, weight, ctx.eps)
    elif ctx.compiled:
        dx, dweight, dbias = train_backward_op(grad_y, x, weight, mean, invstd, ctx.backend)
    else:
        dx, dweight, dbias = _train_backward(grad_y, x, weight, mean, invstd, ctx.backend)
    return (dx, dweight if weight is not None else None, dbias if ctx.has_bias else None, None, None)


def _setup_train_op(ctx: Any, inputs: tuple[Any, ...], output: TrainOutputs) -> None:
    _setup_train(ctx, inputs, output, compiled=True)


train_forward_op.register_autograd(_backward_train, setup_context=_setup_train_op)


class _TrainFunction(torch.autograd.Function):
    """Eager-mode twin of ``bnlab::train_forward``: the same code, without custom-op dispatch."""

    # forward takes ctx itself: with a separate setup_context, Function.apply binds arguments through
    # inspect.signature on every call, which costs more than the CPU kernel of a small layer.
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,  # type: ignore[override]
                eps: float, backend: str) -> TrainOutputs:
        output = _train_forward(x, weight, bias, eps, backend)
        _setup_train(ctx, (x, weight, bias, eps, backend), output)
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:  # type: ignore[override]
        return _backward_train(ctx, *grads)


def _setup_eval(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, running_mean, running_var, weight, bias, eps, _ = inputs
    ctx.save_for_backward(x, running_mean, running_var, weight)
    ctx.eps, ctx.has_bias = eps, bias is not None


def _backward_eval(ctx: Any, grad_y: Tensor) -> tuple[Any, ...]:
    # Inference BN is the affine map y = γ·(x − E[x])·r + β with r = 1/√(Var[x]+ε): its gradients are plain
    # ops that autograd can differentiate again, so no backend code is needed here.
    x, running_mean, running_var, weight = ctx.saved_tensors
    acc = accumulation_dtype(x.dtype)
    g_out, dims = grad_y.to(acc), reduction_dims(x)
    invstd = torch.rsqrt(running_var + ctx.eps)
    scale = invstd if weight is None else weight * invstd
    dx = (g_out * per_channel(scale, x)).to(x.dtype)
    dweight = dbias = None
    if weight is not None:
        xhat = (x.to(acc) - per_channel(running_mean, x)) * per_channel(invstd, x)
        dweight = (g_out * xhat).sum(dims)
    if ctx.has_bias:
        dbias = g_out.sum(dims)
    return dx, None, None, dweight, dbias, None, None


eval_forward_op.register_autograd(_backward_eval, setup_context=_setup_eval)


class _EvalFunction(torch.autograd.Function):
    """Eager-mode twin of ``bnlab::eval_forward``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, running_mean: Tensor, running_var: Tensor,  # type: ignore[override]
                weight: Tensor | None, bias: Tensor | None, eps: float, backend: str) -> Tensor:
        output = _eval_forward(x, running_mean, running_var, weight, bias, eps, backend)
        _setup_eval(ctx, (x, running_mean, running_var, weight, bias, eps, backend), output)
        return output

    backward = staticmethod(_backward_eval)  # type: ignore[assignment]


class _TrainTransformFunction(torch.autograd.Function):
    """The same Function in the form functorch transforms (torch.func.grad, jacrev) require.

    Neither the custom op's autograd nor the faster ctx-in-forward form above is accepted by functorch.
    """

    forward = staticmethod(_train_forward)
    setup_context = staticmethod(_setup_train)
    backward = staticmethod(_backward_train)


class _EvalTransformFunction(torch.autograd.Function):
    """The eval Function in the form functorch transforms require."""

    forward = staticmethod(_eval_forward)
    setup_context = staticmethod(_setup_eval)
    backward = staticmethod(_backward_eval)


# ---------------------------------------------------------------------------------------------- entry points
def compiling() -> bool:
    """True while torch.compile traces: then only the registered custom ops may be called."""
    return torch.compiler.is_compiling()


def _functorch_active() -> bool:
    return torch._C._are_functorch_transforms_active()


def train_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                  backend: str) -> TrainOutputs:
    """Training-mode batch norm: the custom op under torch.compile, an autograd.Function otherwise."""
    if compiling():
        return train_forward_op(x, weight, bias, eps, backend)
    if _functorch_active():
        return _TrainTransformFunction.apply(x, weight, bias, eps, backend)
    return _TrainFunction.apply(x, weight, bias, eps, backend)


def eval_forward(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                 bias: Tensor | None, eps: float, backend: str) -> Tensor:
    """Inference-mode batch norm: the custom op under torch.compile, an autograd.Function otherwise."""
    if compiling():
        return eval_forward_op(x, running_mean, running_var, weight, bias, eps, backend)
    if _functorch_active():
        return _EvalTransformFunction.apply(x, running_mean, running_var, weight, bias, eps, backend)
    return _EvalFunction.apply(x, running_mean, running_var, weight, bias, eps, backend)
