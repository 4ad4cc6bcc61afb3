"""The training forward of a batch-norm variant module (renorm, ghost, masked), beside ``module_forward``.

Eval, a :class:`~bnlab.nn.policy.StatsPolicy` set by ``bnlab.freeze``, and empty batches are plain batch norm's
(``module_forward``). In training the steps are ``module_forward``'s: check the arguments and resolve the backend
before anything changes, then count the batch, run the variant's :class:`~bnlab.variants.call.VariantCall` and
fold its statistics into the running buffers; the layer's ``small_batch`` and ``non_finite`` policies apply as to
every bnlab layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_batch_norm_args, check_input_rank
from bnlab.functional import run
from bnlab.kernels import registry
from bnlab.kernels.base import Backend
from bnlab.nn.batchnorm import module_forward
from bnlab.nn.policy import FOLLOW_MODE, UpdateGuard, small_batch_error
from bnlab.variants.call import VariantCall, train
from bnlab.variants.convention import BiasedVarianceCall
from bnlab.variants.masked import MaskedCall, check_mask

__all__ = ["convention_forward", "masked_forward", "variant_forward"]


def variant_forward(module: Any, input: Tensor, make_call: Callable[[Tensor | None], VariantCall]) -> Tensor:
    """``module``'s forward with the variant ``make_call(step)`` builds in training.

    ``step``: the layer's count of training batches before this one (a 0-d tensor; None without a counter).
    """
    if not module.training or module.stats_policy is not FOLLOW_MODE or input.numel() == 0:
        return module_forward(module, input)
    if input.dim() not in module._bnlab_ranks:
        check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    running_mean, running_var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
    update = module.track_running_stats and running_mean is not None and running_var is not None
    chosen: Backend | Tensor
    counter = module.num_batches_tracked if update else None
    call = make_call(None if counter is None else counter.clone())
    single = input.numel() == input.shape[1]  # one value per channel
    if single and call.min_values > 1:
        if module.small_batch != "running" or not update:
            raise small_batch_error(type(module).__name__, input.shape)
        check_batch_norm_args(input, running_mean, running_var, weight, bias, False, module.eps)
        chosen = module.backend_id if torch.compiler.is_compiling() else registry.resolve_for(
            module._bnlab_backend, input, False, False)
        return run(chosen, input, running_mean, running_var, weight, bias, False, 0.0, module.eps)
    check_batch_norm_args(input, running_mean if update else None, running_var if update else None, weight, bias,
                          not single, module.eps)
    call.check(input)
    if torch.compiler.is_compiling():
        chosen = module.backend_id
    else:
        chosen = registry.resolve_for(module._bnlab_backend, input, True, False)
    factor: float | Tensor = 0.0
    guard = None
    if update:
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
    return y


def masked_forward(module: Any, input: Tensor, mask: Tensor) -> Tensor:
    """``BatchNorm1d.forward(input, mask)``: masked batch norm in training, the mask checked and unused in eval."""
    training = module.training and module.stats_policy.normalize_with != "running"
    check_mask(input, mask, training, type(module).__name__)
    return variant_forward(module, input, lambda step: MaskedCall(module.eps, mask))


def convention_forward(module: Any, input: Tensor) -> Tensor:
    """The forward of a plain layer with ``convention="keras"`` or ``"flax"``: the running variance averages σ²_B."""
    return variant_forward(module, input, lambda step: BiasedVarianceCall(module.eps))
