"""The forward of a batch-norm variant module (renorm, ghost, masked) and of a layer under another framework's
convention, beside ``module_forward``.

Eval, a :class:`~bnlab.nn.policy.StatsPolicy` set by ``bnlab.freeze``, and empty batches are plain batch norm's
(``module_forward``), except under ``convention="darknet"``, whose eval transform differs (:func:`darknet_forward`).
In training the steps are ``module_forward``'s: check the arguments and resolve the backend before anything
changes, then count the batch, run the variant's :class:`~bnlab.variants.call.VariantCall` and fold its
statistics into the running buffers; the layer's ``small_batch`` and ``non_finite`` policies apply as to every
bnlab layer. A fused layer (``BatchNormAct``) under a convention gets its residual and activation applied after
the call, in torch ops (its ``save`` setting then has no effect).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_act_args, check_batch_norm_args, check_input_rank, check_residual
from bnlab.functional import run
from bnlab.kernels import registry
from bnlab.kernels.base import Backend
from bnlab.nn.batchnorm import module_forward
from bnlab.nn.policy import FOLLOW_MODE, UpdateGuard, small_batch_error
from bnlab.reference.fused import activate
from bnlab.variants.call import VariantCall, train
from bnlab.variants.convention import BiasedVarianceCall, DarknetCall, DarknetRunningCall, check_convention
from bnlab.variants.masked import MaskedCall, check_mask

__all__ = ["convention_forward", "darknet_forward", "masked_forward", "variant_forward"]


def variant_forward(module: Any, input: Tensor, make_call: Callable[[Tensor | None], VariantCall],
                    residual: Tensor | None = None) -> Tensor:
    """``module``'s forward with the variant ``make_call(step)`` builds in training.

    ``step``: the layer's count of training batches before this one (a 0-d tensor; None without a counter).
    ``residual``: a fused layer's residual input (added, with its activation, after the variant's output).
    """
    if not module.training or module.stats_policy is not FOLLOW_MODE or input.numel() == 0:
        return module_forward(module, input, residual)
    if input.dim() not in module._bnlab_ranks:
        check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    running_mean, running_var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
    update = module.track_running_stats and running_mean is not None and running_var is not None
    counter = module.num_batches_tracked if update else None
    call = make_call(None if counter is None else counter.clone())
    if input.numel() == input.shape[1] and call.min_values > 1:  # one value per channel
        if module.small_batch != "running" or not update:
            raise small_batch_error(type(module).__name__, input.shape)
        check_batch_norm_args(input, running_mean, running_var, weight, bias, False, module.eps)
        chosen: Backend | Tensor = module.backend_id if torch.compiler.is_compiling() else registry.resolve_for(
            module._bnlab_backend, input, False, residual is not None or module.activation != "identity")
        return run(chosen, input, running_mean, running_var, weight, bias, False, 0.0, module.eps,
                   residual, module.activation, module.negative_slope)
    return run_call(module, input, call, update, residual)


def run_call(module: Any, input: Tensor, call: VariantCall, update: bool, residual: Tensor | None = None, *,
             normalize_with_running: bool = False) -> Tensor:
    """Run ``call`` on ``module``'s input (rank checked) and, with ``update``, fold its statistics into the
    running buffers, counting the batch; then the fused layer's residual and activation.

    ``normalize_with_running``: the call normalizes with the running statistics (checked as an eval call's are).
    """
    running_mean, running_var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
    if update and _stats.is_recomputation():
        # A forward recomputed by activation checkpointing normalizes again but must not count the batch twice
        # (module_forward's rule). The variants' training output does not read the running statistics, except
        # Batch Renorm's r and d (and its schedule's step), which then come from the already updated ones.
        update = False
    single = input.numel() == input.shape[1]
    reads = update or normalize_with_running
    check_batch_norm_args(input, running_mean if reads else None, running_var if reads else None, weight, bias,
                          not normalize_with_running and (call.min_values > 1 or not single), module.eps)
    activation = module.activation
    if residual is not None or activation != "identity":
        check_act_args(activation, module.negative_slope, module.save)
        check_residual(input, residual)
    call.check(input)
    chosen: Backend | Tensor
    if torch.compiler.is_compiling():
        chosen = module.backend_id
    else:
        chosen = registry.resolve_for(module._bnlab_backend, input, True, False)
    factor: float | Tensor = 0.0
    guard = None
    if update:
        counter = module.num_batches_tracked
        factor = 0.0 if module.momentum is None else module.momentum
        if module.non_finite != "propagate":
            guard = UpdateGuard(module, running_mean, running_var, counter)
        if counter is not None:
            factor = _stats.advance(counter, module.momentum)
    y = train(call, chosen, input, weight, bias)
    if update:
        call.update(running_mean, running_var, factor)
        if guard is not None:
            guard.settle()
    if residual is not None:
        y = y + residual
    return activate(y, activation, module.negative_slope) if activation != "identity" else y


def masked_forward(module: Any, input: Tensor, mask: Tensor) -> Tensor:
    """``BatchNorm1d.forward(input, mask)``: masked batch norm in training, the mask checked and unused in eval."""
    training = module.training and module.stats_policy.normalize_with != "running"
    check_mask(input, mask, training, type(module).__name__)
    return variant_forward(module, input, lambda step: MaskedCall(module.eps, mask))


def convention_forward(module: Any, input: Tensor, residual: Tensor | None = None) -> Tensor:
    """The forward of a plain or fused layer whose ``convention`` is not "torch" (docs/compat.md).

    "keras" and "flax": training with the running variance averaging σ²_B, eval torch's. "darknet":
    :func:`darknet_forward`. A convention assigned after construction is checked here.
    """
    convention = module.convention
    if convention == "darknet":
        return darknet_forward(module, input, residual)
    if convention not in ("keras", "flax"):
        check_convention(convention, module.momentum, type(module).__name__)
    return variant_forward(module, input, lambda step: BiasedVarianceCall(module.eps), residual)


def darknet_forward(module: Any, input: Tensor, residual: Tensor | None = None) -> Tensor:
    """darknet's rules in every mode: batch statistics normalize with (√s² + ε), running ones with (√r_v + ε).

    Which statistics normalize and whether the running ones move is decided as ``module_forward`` decides it (the
    mode, ``track_running_stats``, a ``bnlab.freeze`` policy, ``small_batch="running"`` for one value per channel).
    """
    if input.numel() == 0:
        return module_forward(module, input, residual)  # nothing to normalize; torch counts the batch
    if input.dim() not in module._bnlab_ranks:
        check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    running_mean, running_var = module.running_mean, module.running_var
    has_stats = running_mean is not None and running_var is not None
    use_batch_stats = module.training or not has_stats
    update = module.training and module.track_running_stats and has_stats
    policy = module.stats_policy
    if policy is not FOLLOW_MODE:
        use_batch_stats, update = policy.decide(use_batch_stats, update, has_stats, type(module).__name__)
    if use_batch_stats and input.numel() == input.shape[1]:  # one value per channel: s² divides by m − 1 = 0
        if module.small_batch == "running" and has_stats:
            use_batch_stats = update = False
        else:
            raise small_batch_error(type(module).__name__, input.shape)
    if use_batch_stats:
        return run_call(module, input, DarknetCall(module.eps), update, residual)
    call = DarknetRunningCall(module.eps, running_mean, running_var, update_from_batch=update)
    return run_call(module, input, call, update, residual, normalize_with_running=True)
