"""Autograd over the backend contract, and the ``torch.library`` custom ops ``torch.compile`` sees.

One operation, act(BN(x) + r) with ``save=`` (plain batch norm is r = None, act = identity), in two modes:

- ``bnlab::train`` (Algorithm 1) with its backward ``bnlab::train_backward``;
- ``bnlab::eval`` (Algorithm 2), whose backward is plain torch ops (inference batch norm is an affine map).

One autograd definition serves two callers, both running the same backend code: the custom op, which is what
``torch.compile`` traces (so a compiled graph keeps the fused kernels and saves what ``save=`` says); and a
``torch.autograd.Function`` that plain eager mode calls, because dispatching through a Python custom op costs
about 70 µs per forward+backward on CPU (this Function about 20 µs), which would make small layers slower than
PyTorch's. Eager mode hands the resolved :class:`~bnlab.kernels.base.Backend` itself to the Function; the custom ops
take the backend as a small integer tensor (:func:`bnlab.kernels.registry.name_id`) and resolve it when they run,
so that modules differing only in their backend share one compiled graph instead of recompiling per name.

What is saved for backward. ``save="input"``: x (and r), from which z is recomputed. ``save="output"``: y (and r),
from which x̂ = (act⁻¹(y) − β − r)/γ is recovered, where the forward kernel found that y determines x̂ (no γ = 0,
no ELU output near its saturation at −1: :func:`bnlab.reference.fused.output_determines_input`); where it did not,
that call keeps x instead, so gradients stay exact. The decision is made by the forward kernel as it writes y and
read on the host: free on CPU (the ``cpu`` kernel returns it, no tensor is read), one wait for the forward kernel
on CUDA (the price of exact gradients there; see docs/design.md). Under ``torch.compile`` the kept x is an extra
output of the custom op, of size 0 unless it is needed.

PyTorch's transforms cannot see through a backend's kernels (the cpu and triton ones read data pointers, which
dual and batched tensors do not have; an autograd Function without a ``jvp`` has no forward derivative). Inside a
forward-AD level or a functorch transform (``torch.func.jvp``, ``vmap``, ``grad``, ``jacrev``) a call therefore
composes differentiable torch ops instead (:func:`bnlab.kernels.composed.train_for_transforms`: ATen's batch
norm at the accumulation dtype, then the residual and the activation), whatever the backend: PyTorch's own
derivative formulas and batching rules apply, and ``save=`` has no effect there (autograd keeps what those ops
keep). A backward pass run under vmap (``autograd.grad(..., is_grads_batched=True)``, gradcheck's batched
gradients, ``jacrev``) after a normal forward uses the torch-op phases of :mod:`bnlab.kernels.composed`. The
normal path pays two reads of interpreter state for this (:func:`under_transform`).

Double backward (``create_graph=True``) differentiates the float64 formulas of :mod:`bnlab.reference.fused` with
autograd, for every backend, from the saved input; with ``save="output"`` the input is gone, and it raises saying so.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from bnlab._shapes import accumulation_dtype, memory_format_of, per_channel, reduction_dims
from bnlab.kernels import composed, registry
from bnlab.kernels.base import Backend
from bnlab.reference import fused as ref

TrainOutputs = tuple[Tensor, Tensor, Tensor, Tensor]


# ---------------------------------------------------------------------------------------------- the computation
def _forward(backend: Backend, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
             eps: float, activation: str, slope: float, save: str) -> tuple[Tensor, Tensor, Tensor, Tensor, bool]:
    """(y, μ_B, invstd, σ²_B, whether the backward starts from y)."""
    if x.numel() == 0:
        # An empty batch has no statistics: torch returns an empty output and leaves running stats alone. The
        # output keeps x's strides as torch's does (memory_format_of calls every empty tensor contiguous).
        stats = x.new_zeros(x.shape[1], dtype=accumulation_dtype(x.dtype))
        return torch.empty_like(x), stats, stats.clone(), stats.clone(), False
    out = backend.forward_train(x, weight, bias, eps, residual, activation, slope, check_output=save == "output")
    from_output = save == "output" and bool(out.invertible)
    return out.y, out.mean, out.invstd, out.var, from_output


def _backward(backend: Backend, grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
              bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, slope: float, from_output: bool,
              need_dresidual: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    if saved.numel() == 0:
        zeros = saved.new_zeros(saved.shape[1], dtype=accumulation_dtype(saved.dtype))
        empty = torch.empty_like(saved)  # the saved tensor's strides, as for the output
        return empty, (empty.clone() if need_dresidual else None), zeros, zeros.clone()
    g = backend.backward(grad_y, saved, mean, invstd, weight, bias, residual, activation, slope, from_output,
                         need_dresidual)
    return g.dx, g.dresidual, g.dweight, g.dbias


def _eval(backend: Backend, x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
          weight: Tensor | None, bias: Tensor | None, eps: float, activation: str, slope: float) -> Tensor:
    if x.numel() == 0:
        return torch.empty_like(x)  # x's strides, as in _forward
    return backend.forward_eval(x, running_mean, running_var, weight, bias, eps, residual, activation, slope)


def _resolve_id(backend_id: Tensor, x: Tensor, training: bool, residual: Tensor | None, activation: str) -> Backend:
    # Inside a custom op: the module's choice (a name, or "auto") resolved when the graph runs, as eager mode would.
    return registry.resolve(registry.name_of(int(backend_id)), x.device, x.dtype, x.numel(), training,
                            residual is not None or activation != "identity",
                            memory_format_of(x) is not torch.contiguous_format)


# ------------------------------------------------------------------------------------------- the custom ops
@torch.library.custom_op("bnlab::train", mutates_args=())
def train_op(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float,
             activation: str, negative_slope: float, save: str,
             backend: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, μ_B, invstd, σ²_B, kept, chosen): a training-mode act(BN(x) + r).

    ``kept`` is x, flattened, where ``save="output"`` found that y does not determine x̂ (else empty); ``chosen``
    is the id of the backend that ran, for the backward to use the same one.
    """
    chosen = _resolve_id(backend, x, True, residual, activation)
    y, mean, invstd, var, from_output = _forward(chosen, x, residual, weight, bias, eps, activation,
                                                 negative_slope, save)
    keep = save == "output" and not from_output
    kept = x.contiguous().reshape(-1).clone() if keep else x.new_empty(0)
    return y, mean, invstd, var, kept, torch.tensor(registry.name_id(chosen.name))


@train_op.register_fake
def _train_fake(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float,
                activation: str, negative_slope: float, save: str,
                backend: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc, channels = accumulation_dtype(x.dtype), x.shape[1]
    # Whether x is kept is decided by the kernel as it runs: a size only known then.
    kept = x.new_empty(torch.library.get_ctx().new_dynamic_size() if save == "output" else 0)
    return (torch.empty_like(x, memory_format=memory_format_of(x)), x.new_empty(channels, dtype=acc),
            x.new_empty(channels, dtype=acc), x.new_empty(channels, dtype=acc), kept,
            torch.empty((), dtype=torch.int64))


@torch.library.custom_op("bnlab::train_backward", mutates_args=())
def train_backward_op(grad_y: Tensor, saved: Tensor, kept: Tensor, residual: Tensor | None, weight: Tensor | None,
                      bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, negative_slope: float,
                      save: str, need_dresidual: bool, chosen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(∂ℓ/∂x, ∂ℓ/∂r (empty when not asked), ∂ℓ/∂γ, ∂ℓ/∂β) of ``bnlab::train``, from the saved x or y."""
    backend = registry.get_backend(registry.name_of(int(chosen)))
    from_output = save == "output"
    if kept.numel():
        saved, from_output = kept.view(saved.shape).contiguous(memory_format=memory_format_of(saved)), False
    dx, dres, dweight, dbias = _backward(backend, grad_y, saved, residual, weight, bias, mean, invstd, activation,
                                         negative_slope, from_output, need_dresidual)
    return dx, (saved.new_empty(0) if dres is None else dres), dweight, dbias


@train_backward_op.register_fake
def _train_backward_fake(grad_y: Tensor, saved: Tensor, kept: Tensor, residual: Tensor | None,
                         weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str,
                         negative_slope: float, save: str, need_dresidual: bool,
                         chosen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc, fmt = accumulation_dtype(saved.dtype), memory_format_of(saved)
    dres = torch.empty_like(saved, memory_format=fmt) if need_dresidual else saved.new_empty(0)
    return (torch.empty_like(saved, memory_format=fmt), dres, saved.new_empty(saved.shape[1], dtype=acc),
            saved.new_empty(saved.shape[1], dtype=acc))


@torch.library.custom_op("bnlab::eval", mutates_args=())
def eval_op(x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
            bias: Tensor | None, eps: float, activation: str, negative_slope: float, backend: Tensor) -> Tensor:
    """Inference-mode act(BN(x) + r) with population statistics (Algorithm 2)."""
    chosen = _resolve_id(backend, x, False, residual, activation)
    return _eval(chosen, x, residual, running_mean, running_var, weight, bias, eps, activation, negative_slope)


@eval_op.register_fake
def _eval_fake(x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
               weight: Tensor | None, bias: Tensor | None, eps: float, activation: str, negative_slope: float,
               backend: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format_of(x))


# ------------------------------------------------------------------------------------------------- autograd
def _setup_train(ctx: Any, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                 eps: float, activation: str, slope: float, save: str, backend: Any, y: Tensor, mean: Tensor,
                 invstd: Tensor, from_output: bool, kept: Tensor | None) -> None:
    # Saved: y where it determines x̂ (save="output"), else x; `kept` (x copied) only for the custom op.
    ctx.save_for_backward(y if from_output else x, kept, residual, weight, bias, mean, invstd)
    ctx.config = (eps, activation, slope, save, from_output, backend, residual is not None)


def _backward_train(ctx: Any, grad_y: Tensor | None, *unused: Any) -> tuple[Any, ...]:
    if grad_y is None:  # (the eager Function does not materialize zero gradients): no gradient in, none out
        return None, None, None, None
    saved, kept, residual, weight, bias, mean, invstd = ctx.saved_tensors
    eps, activation, slope, save, from_output, backend, has_residual = ctx.config
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():
        grads = _differentiable_backward(grad_y, saved, residual, weight, bias, eps, activation, slope, from_output,
                                         need)
    elif _batched(grad_y):  # torch ops that vmap batches: a backend's kernels cannot take a batched grad_y
        grads = composed.backward_for_transforms(grad_y, saved, mean, invstd, weight, bias, residual, activation,
                                                 slope, from_output, has_residual and need[1])
    elif not isinstance(backend, Tensor):
        grads = _backward(backend, grad_y, saved, residual, weight, bias, mean, invstd, activation, slope,
                          from_output, has_residual and need[1])
    else:  # the custom op's backward: the backend that ran, by id; x from `kept` where it was kept
        dx, dres, dweight, dbias = train_backward_op(grad_y, saved, kept, residual, weight, bias, mean, invstd,
                                                     activation, slope, save, has_residual and need[1], backend)
        grads = (dx, dres if dres.numel() or not has_residual else None, dweight, dbias)
    dx, dres, dweight, dbias = grads
    return (dx, dres if has_residual else None, dweight if weight is not None and need[2] else None,
            dbias if bias is not None and need[3] else None)


def _differentiable_backward(grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
                             bias: Tensor | None, eps: float, activation: str, slope: float, from_output: bool,
                             need: tuple[bool, ...]) -> tuple[Any, ...]:
    # create_graph=True: recompute act(BN(x) + r) with the float64 formulas in differentiable ops and let autograd
    # take the gradient, so that second derivatives exist, whatever the backend.
    if from_output:
        raise RuntimeError(
            "double backward (create_graph=True) through a fused layer with save='output' is not possible: the "
            "input was not kept; use save='input' for this layer"
        )
    leaves = (saved, residual, weight, bias)
    inputs = [t for t, n in zip(leaves, need, strict=False) if t is not None and n]
    with torch.enable_grad():
        y = ref.forward_train(saved, weight, bias, eps, residual, activation, slope).y.to(saved.dtype)
        grads = iter(torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True))
    return tuple(next(grads) if t is not None and n else None for t, n in zip(leaves, need, strict=False))


def _setup_train_op(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, residual, weight, bias, eps, activation, slope, save, _ = inputs
    y, mean, invstd, var, kept, chosen = output
    ctx.mark_non_differentiable(mean, invstd, var, kept, chosen)
    # In a traced graph the saved tensor is chosen by `save` alone; x comes back from `kept` where needed.
    _setup_train(ctx, x, residual, weight, bias, eps, activation, slope, save, chosen, y, mean, invstd,
                 save == "output", kept)


def _backward_train_op(ctx: Any, grad_y: Tensor, *unused: Any) -> tuple[Any, ...]:
    return (*_backward_train(ctx, grad_y), None, None, None, None, None)


train_op.register_autograd(_backward_train_op, setup_context=_setup_train_op)


class _TrainFunction(torch.autograd.Function):
    """Eager-mode twin of ``bnlab::train``: the same code, without custom-op dispatch."""

    # forward takes ctx itself: with a separate setup_context, Function.apply binds arguments through
    # inspect.signature on every call, which costs more than the CPU kernel of a small layer.
    @staticmethod
    def forward(ctx: Any, x: Tensor, residual: Tensor | None, weight: Tensor | None,  # type: ignore[override]
                bias: Tensor | None, eps: float, activation: str, slope: float, save: str,
                backend: Backend) -> TrainOutputs:
        y, mean, invstd, var, from_output = _forward(backend, x, residual, weight, bias, eps, activation, slope, save)
        ctx.mark_non_differentiable(mean, invstd, var)
        # The statistics never receive a gradient: without this autograd would allocate three zero tensors for
        # them before every backward call.
        ctx.set_materialize_grads(False)
        _setup_train(ctx, x, residual, weight, bias, eps, activation, slope, save, backend, y, mean, invstd,
                     from_output, None)
        return y, mean, invstd, var

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        return (*_backward_train(ctx, grad_y), None, None, None, None, None)


def _setup_eval(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, residual, running_mean, running_var, weight, bias, eps, activation, slope, _ = inputs
    ctx.save_for_backward(x, residual, running_mean, running_var, weight, bias)
    ctx.config = (eps, activation, slope)


def _backward_eval(ctx: Any, grad_y: Tensor) -> tuple[Any, ...]:
    # Inference BN is the affine map z = γ·(x − E[x])·r + β (+ residual), r = 1/√(Var[x]+ε), then the activation:
    # its gradients are plain ops, which autograd can differentiate again, so no backend code is needed here.
    x, residual, running_mean, running_var, weight, bias = ctx.saved_tensors
    eps, activation, slope = ctx.config
    acc = accumulation_dtype(x.dtype)
    dims = reduction_dims(x)
    invstd = torch.rsqrt(running_var + eps)
    xhat = (x.to(acc) - per_channel(running_mean, x)) * per_channel(invstd, x)
    g_z = grad_y.to(acc)
    if activation != "identity":
        gamma = 1.0 if weight is None else per_channel(weight, x)
        beta = 0.0 if bias is None else per_channel(bias, x)
        z = xhat * gamma + beta + (0.0 if residual is None else residual.to(acc))
        g_z = g_z * ref.activation_grad(z, activation, slope)
    scale = invstd if weight is None else weight * invstd
    dx = (g_z * per_channel(scale, x)).to(x.dtype)
    dres = g_z.to(x.dtype) if residual is not None else None
    dweight = (g_z * xhat).sum(dims) if weight is not None else None
    dbias = g_z.sum(dims) if bias is not None else None
    return dx, dres, None, None, dweight, dbias, None, None, None, None


eval_op.register_autograd(_backward_eval, setup_context=_setup_eval)


class _EvalFunction(torch.autograd.Function):
    """Eager-mode twin of ``bnlab::eval``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, residual: Tensor | None, running_mean: Tensor,  # type: ignore[override]
                running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
                slope: float, backend: Backend) -> Tensor:
        output = _eval(backend, x, residual, running_mean, running_var, weight, bias, eps, activation, slope)
        _setup_eval(ctx, (x, residual, running_mean, running_var, weight, bias, eps, activation, slope, backend),
                    output)
        return output

    backward = staticmethod(_backward_eval)  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- entry points
def compiling() -> bool:
    """True while torch.compile traces: then only the registered custom ops may be called."""
    return torch.compiler.is_compiling()


def under_transform() -> bool:
    """True inside a forward-AD level (``torch.autograd.forward_ad.dual_level``) or a functorch transform.

    Then a call composes differentiable torch ops (:func:`bnlab.kernels.composed.train_for_transforms`) instead of
    running a backend's kernels, which neither forward-mode AD nor vmap can see through. Two reads of interpreter
    state, so the normal path pays nothing measurable.
    """
    return fwAD._current_level >= 0 or _functorch_active()


# Bound once: each is read on every eager call, where attribute lookups through torch._C add up.
_functorch_active = torch._C._are_functorch_transforms_active
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def _batched(grad_y: Tensor) -> bool:
    # A backward pass under vmap: functorch's (torch.func.vmap, jacrev) or the legacy one that
    # autograd.grad(is_grads_batched=True) and gradcheck's batched-gradient check use.
    return _functorch_active() or _legacy_batched(grad_y)


def _nothing_to_record(*tensors: Tensor | None) -> bool:
    """True when neither autograd nor torch.jit.trace needs the Function: grad mode off or no input that requires
    grad, and no trace being recorded (a trace sees the kernel only as the Function's node; called bare, the
    kernel's output would be traced as a constant)."""
    if _tracing_state() is not None:
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


_tracing_state = torch._C._get_tracing_state


def plain_eager(backend: Backend | Tensor) -> bool:
    """True when a call runs its backend's kernels on plain tensors: not a compiled graph (``backend`` is then an
    id tensor), not a transform's composed ops, not a ``torch.jit.trace`` recording. Only then may a backend touch
    the running statistics itself (:meth:`~bnlab.kernels.base.Backend.update_running_stats`)."""
    return not isinstance(backend, Tensor) and not under_transform() and _tracing_state() is None


def train(backend: Backend | Tensor, x: Tensor, residual: Tensor | None, weight: Tensor | None,
          bias: Tensor | None, eps: float, activation: str, slope: float, save: str) -> TrainOutputs:
    """Training-mode act(BN(x) + r): (y, μ_B, invstd, σ²_B).

    ``backend``: the resolved backend (eager), or a backend id tensor (under torch.compile: the custom op).
    """
    if isinstance(backend, Tensor):
        y, mean, invstd, var, _, _ = train_op(x, residual, weight, bias, eps, activation, slope, save, backend)
        return y, mean, invstd, var
    if under_transform():
        return composed.train_for_transforms(x, residual, weight, bias, eps, activation, slope)
    if _nothing_to_record(x, residual, weight, bias):
        # Nothing to differentiate (statistics recalibration under no_grad, frozen inputs): the kernel alone.
        y, mean, invstd, var, _ = _forward(backend, x, residual, weight, bias, eps, activation, slope, "input")
        return y, mean, invstd, var
    return _TrainFunction.apply(x, residual, weight, bias, eps, activation, slope, save, backend)


def evaluate(backend: Backend | Tensor, x: Tensor, residual: Tensor | None, running_mean: Tensor,
             running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
             slope: float) -> Tensor:
    """Inference-mode act(BN(x) + r) with population statistics; ``backend`` as for :func:`train`."""
    if isinstance(backend, Tensor):
        return eval_op(x, residual, running_mean, running_var, weight, bias, eps, activation, slope, backend)
    if under_transform():
        return composed.eval_for_transforms(x, residual, running_mean, running_var, weight, bias, eps, activation,
                                            slope)
    if _nothing_to_record(x, residual, running_mean, running_var, weight, bias):
        # Nothing to differentiate (inference under no_grad or inference_mode, or frozen inputs): the kernel
        # alone. The autograd Function would add about 10 µs per call and record nothing.
        return _eval(backend, x, residual, running_mean, running_var, weight, bias, eps, activation, slope)
    return _EvalFunction.apply(x, residual, running_mean, running_var, weight, bias, eps, activation, slope,
                               backend)
