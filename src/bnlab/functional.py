"""The functional forms: ``batch_norm`` (torch's signature) and ``batch_norm_act``, over one path.

Plain batch norm is the fused operation with no residual and the identity activation, so both forms, and the
modules of :mod:`bnlab.nn`, go through the same steps, each written once:

1. check the arguments (:mod:`bnlab._checks`, in torch's order);
2. resolve the backend, once (:func:`choose`), before anything is changed;
3. run (:func:`run`): the native complete op in eager plain calls, else the custom ops / autograd Functions of
   :mod:`bnlab._autograd` over the backend contract; the running statistics are updated in :mod:`bnlab._stats`.

A module moves its batch counter between steps 2 and 3, so that a call that raises changes nothing. A batch-norm
variant written over the phase contract (synchronized, ghost, renormalized, masked) reuses :func:`choose` and
:mod:`bnlab._stats` and replaces step 3 with its own arrangement of the phases.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import _autograd, _stats
from bnlab._checks import check_act_args, check_batch_norm_args, check_momentum, check_residual
from bnlab._shapes import accumulation_dtype, values_per_channel
from bnlab.kernels import registry
from bnlab.kernels.base import Backend
from bnlab.variants.call import train as variant_train
from bnlab.variants.masked import MaskedCall, check_mask

__all__ = ["batch_norm", "batch_norm_act", "choose", "run"]


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, backend: str = "auto",
               mask: Tensor | None = None) -> Tensor:
    """Batch normalization of ``input`` (N, C, *) per channel, like ``torch.nn.functional.batch_norm``.

    In training (``training=True``) the input is normalized with its own mini-batch statistics, the mean μ_B and
    the biased variance σ²_B over every dimension but 1; if running buffers are given they are updated in
    place, ``new = (1 − momentum)·old + momentum·batch``, with the unbiased variance m/(m−1)·σ²_B.
    In evaluation the running statistics normalize: y = γ(x − E[x])/√(Var[x] + ε) + β.

    Args:
        input: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); float16, bfloat16, float32 or float64.
        running_mean, running_var: (C,) buffers, or None (required when ``training=False``); in training both
            or neither.
        weight, bias: (C,) γ and β, or None for γ = 1 and β = 0.
        training: use batch statistics (True) or running statistics (False). Default False, as in torch.
        momentum: the weight of the new batch in the running average. Default 0.1.
        eps: ε added to the variance. Default 1e-5.
        backend: ``"auto"`` (the fastest correct backend here, or ``$BNLAB_BACKEND``) or a name from
            :func:`bnlab.available_backends`.
        mask: None, or a boolean (N, L) tensor for an (N, C, L) input, True at valid positions (masked batch norm,
            :mod:`bnlab.variants.masked`): in training the statistics are those of the valid positions (at least
            2), every position is normalized with them and the running update uses the valid count; in
            evaluation the mask changes nothing.

    Returns:
        A tensor with the input's shape, dtype and memory format (channels_last stays channels_last).
    """
    check_momentum(momentum)
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    if mask is not None:
        check_mask(input, mask, training)
    chosen = choose(backend, input, training)
    if mask is not None and training and input.numel():
        call = MaskedCall(eps, mask)
        y = variant_train(call, chosen, input, weight, bias)
        call.update(running_mean, running_var, momentum)
        return y
    return run(chosen, input, running_mean, running_var, weight, bias, training, momentum, eps)


def batch_norm_act(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5, *, residual: Tensor | None = None,
                   activation: str = "relu", negative_slope: float = 0.01, save: str = "input",
                   backend: str = "auto") -> Tensor:
    """act(batch_norm(input) + residual) as one operation, with :func:`batch_norm`'s arguments and semantics.

    Args:
        input: (N, C, *) float tensor; residual: None or a tensor of the same shape, dtype and device.
        activation: one of ``"identity"``, ``"relu"``, ``"leaky_relu"``, ``"silu"``, ``"elu"`` (α = 1);
            negative_slope: leaky_relu's slope (0.01).
        save: what the backward pass starts from. ``"input"`` (default) keeps x (and the residual): z = γx̂ + β + r
            is recomputed in backward, so BN + act keeps one activation-sized tensor where PyTorch's unfused
            sequence keeps two. ``"output"`` keeps y (and the residual), for invertible activations (identity,
            leaky_relu with negative_slope > 0, elu): the backward recovers x̂ = (act⁻¹(y) − β − r)/γ, so the layer
            keeps only the tensor the next layer keeps anyway. Where y does not determine x̂ (a channel with γ = 0,
            an ELU output within 2⁻⁵ of its saturation at −1) the call keeps x instead, so gradients stay exact.
            Small non-zero |γ| is exact in exact arithmetic; in floating point x̂ then carries an error of about
            ulp(y)/|γ| (times 1/negative_slope on leaky_relu's negative side), coarse in bfloat16 or float16:
            prefer ``"input"`` there. Double backward needs ``"input"``. Under forward-mode AD and ``torch.func``
            transforms (jvp, vmap, grad) the call composes torch ops and ``save`` has no effect (see
            :mod:`bnlab._autograd`).
        backend: ``"auto"`` or a backend name, as for :func:`batch_norm`. Every backend runs every call: the
            ``native`` one composes PyTorch's ops (BN, ``+``, the activation; torch ops for a backward from y).

    Returns:
        A tensor with the input's shape, dtype and memory format.
    """
    check_momentum(momentum, "bnlab.nn.BatchNormAct*d")
    check_act_args(activation, negative_slope, save)
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    check_residual(input, residual)
    chosen = choose(backend, input, training, residual, activation)
    return run(chosen, input, running_mean, running_var, weight, bias, training, momentum, eps, residual,
               activation, float(negative_slope), save)


def choose(backend: str, input: Tensor, training: bool, residual: Tensor | None = None,
           activation: str = "identity", backend_id: Tensor | None = None) -> Backend | Tensor:
    """The backend a call runs on: resolved here, once, in eager mode (raising if it cannot run).

    Under ``torch.compile`` the answer is a backend id tensor instead (the module's ``backend_id`` if given):
    the custom ops resolve it when the graph runs, so that the name does not become a guard of the graph.
    """
    if torch.compiler.is_compiling():
        if backend_id is not None:
            return backend_id
        return torch.tensor(registry.name_id(registry.check_backend_name(backend)))
    return registry.resolve_for(backend, input, training, residual is not None or activation != "identity")


def run(chosen: Backend | Tensor, input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
        weight: Tensor | None, bias: Tensor | None, training: bool, factor: float | Tensor, eps: float,
        residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
        save: str = "input") -> Tensor:
    """Run a checked call on the chosen backend and update the running statistics (training, buffers given).

    ``factor`` is the averaging factor of the running update: the momentum, or 1/t (a tensor) for the cumulative
    average of a module with ``momentum=None``.
    """
    # (A Tensor `chosen` is a backend id under torch.compile; isinstance on it is cheaper than on the Backend ABC.)
    if (residual is None and activation == "identity" and not isinstance(chosen, Tensor)
            and chosen.provides_complete_op and input.numel()):
        # Eager plain call: one ATen call does everything, running update included (the Python around the
        # phases would cost more than the kernel on small layers). Not for empty batches: ATen fails on zero
        # channels with parameters, where the path below returns an empty output.
        momentum = float(factor) if isinstance(factor, Tensor) else factor
        return chosen.complete_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if input.dim() < 2:  # an empty 1-D batch, which torch accepts
        return torch.empty_like(input)
    acc = accumulation_dtype(input.dtype)
    # A no-op for float32 parameters; for a .half() module it is a differentiable cast, so γ's gradient
    # comes back in half while the arithmetic stays in float32.
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    if training:
        y, mean, _, var = _autograd.train(chosen, input, residual, w, b, eps, activation, negative_slope, save)
        if running_mean is not None or running_var is not None:
            # The backend's update (the same arithmetic, perhaps in one call of its own) where its kernels ran on
            # plain tensors; else torch ops a compiled graph, a transform or a trace can see.
            eager = _autograd.plain_eager(chosen)
            update = chosen.update_running_stats if eager else _stats.update_running_stats  # type: ignore[union-attr]
            update(running_mean, running_var, mean, var, values_per_channel(input), factor)
        return y
    if running_mean is None or running_var is None:  # only an empty batch gets here without them (as in torch)
        running_mean, running_var = input.new_zeros(input.shape[1], dtype=acc), input.new_ones(input.shape[1],
                                                                                                  dtype=acc)
    return _autograd.evaluate(chosen, input, residual, running_mean.to(acc), running_var.to(acc), w, b, eps,
                              activation, negative_slope)


def normalize_with_running_then_update(chosen: Backend | Tensor, input: Tensor, running_mean: Tensor,
                                       running_var: Tensor, weight: Tensor | None, bias: Tensor | None,
                                       factor: float | Tensor, eps: float, residual: Tensor | None = None,
                                       activation: str = "identity", negative_slope: float = 0.01) -> Tensor:
    """Normalize with the running statistics as they were, then fold this batch's statistics into them.

    The one combination torch's ``batch_norm`` has no flag for (a frozen layer that still tracks its input:
    :class:`bnlab.nn.policy.StatsPolicy`). The batch's moments come from the backend's ``stats`` phase.
    """
    # Copies: autograd keeps the statistics that normalized for the backward pass, and they change below.
    y = run(chosen, input, running_mean.clone(), running_var.clone(), weight, bias, False, factor, eps, residual,
            activation, negative_slope)
    if input.numel():
        with torch.no_grad():
            # The backend's statistics phase; in a traced graph, the same moments in torch ops.
            x = input.detach()
            moments = _stats.batch_moments(x) if isinstance(chosen, Tensor) else chosen.stats(x)
            mean, var = _stats.mean_var(moments)
        # As in run: the backend's own update (one C call on cpu) where its kernels ran on plain tensors.
        eager = _autograd.plain_eager(chosen)
        update = chosen.update_running_stats if eager else _stats.update_running_stats  # type: ignore[union-attr]
        update(running_mean, running_var, mean, var, values_per_channel(input), factor)
    return y
