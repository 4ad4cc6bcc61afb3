"""``bnlab.functional.batch_norm``: torch's signature and semantics, with a choice of backend.

This is where a call is checked, its backend chosen, parameters brought to the accumulation dtype, the
computation handed to :mod:`bnlab.ops`, and the running statistics updated through :mod:`bnlab._stats`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import _stats, ops
from bnlab._checks import check_batch_norm_args
from bnlab.kernels import resolve
from bnlab.kernels.base import memory_format_of
from bnlab.reference.algorithm1 import accumulation_dtype, values_per_channel

__all__ = ["batch_norm"]


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, backend: str = "auto") -> Tensor:
    """Batch normalization of ``input`` (N, C, *) per channel, like ``torch.nn.functional.batch_norm``.

    In training (``training=True``) the input is normalized with its own mini-batch statistics, the mean μ_B and
    the biased variance σ²_B over every dimension but 1; if running buffers are given they are updated in
    place, ``new = (1 − momentum)·old + momentum·batch``, with the unbiased variance m/(m−1)·σ²_B.
    In evaluation the running statistics normalize: y = γ(x − E[x])/√(Var[x] + ε) + β.

    Args:
        input: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); float16, bfloat16, float32 or float64.
        running_mean, running_var: (C,) buffers, or None (required when ``training=False``).
        weight, bias: (C,) γ and β, or None for γ = 1 and β = 0.
        training: use batch statistics (True) or running statistics (False). Default False, as in torch.
        momentum: the weight of the new batch in the running average. Default 0.1.
        eps: ε added to the variance. Default 1e-5.
        backend: ``"auto"`` (the fastest correct backend here, or ``$BNLAB_BACKEND``) or a name from
            :func:`bnlab.available_backends`.

    Returns:
        A tensor with the input's shape, dtype and memory format (channels_last stays channels_last).
    """
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise TypeError(
            f"momentum must be a number, got {momentum!r}; the cumulative average (momentum=None) needs the "
            f"batch counter of a module: use bnlab.nn.BatchNorm*d(momentum=None)"
        )
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, backend)


def _batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                weight: Tensor | None, bias: Tensor | None, training: bool, factor: float | Tensor,
                eps: float, backend: str) -> Tensor:
    """``batch_norm`` with the averaging factor given directly (a tensor for the cumulative average)."""
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    return _dispatch(input, running_mean, running_var, weight, bias, training, factor, eps, backend)


def _dispatch(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
              weight: Tensor | None, bias: Tensor | None, training: bool, factor: float | Tensor,
              eps: float, backend: str) -> Tensor:
    """Run checked arguments on the chosen backend and update the running statistics."""
    chosen = resolve(backend, input.device, input.dtype, input.numel(), training,
                     channels_last=memory_format_of(input) is not torch.contiguous_format)
    if chosen.provides_complete_op and not ops.compiling():
        momentum = float(factor) if isinstance(factor, Tensor) else factor
        return chosen.complete_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    name, acc = chosen.name, accumulation_dtype(input.dtype)
    # A no-op for float32 parameters; for a .half() module it is a differentiable cast, so γ's gradient
    # comes back in half while the arithmetic stays in float32.
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    if training:
        y, mean, _, var = ops.train_forward(input, w, b, eps, name)
        _stats.update_running_stats(running_mean, running_var, mean, var, values_per_channel(input), factor)
        return y
    assert running_mean is not None and running_var is not None  # checked above, for the type checker
    return ops.eval_forward(input, running_mean.to(acc), running_var.to(acc), w, b, eps, name)
