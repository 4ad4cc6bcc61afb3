"""The one place where running statistics are updated.

PyTorch's convention, which bnlab keeps so that checkpoints and training curves match torch:

- exponential moving average ``new = (1 − momentum)·old + momentum·batch``. Keras and Flax name the weight
  of the *old* value momentum instead: PyTorch's 0.1 is their 0.9, and their default 0.99 is PyTorch's 0.01;
- ``momentum=None`` is the cumulative average: the factor is 1/t for the t-th batch, so after t batches the
  running value is the plain mean of the t batch statistics;
- the stored variance is the unbiased one, m/(m−1)·σ²_B, as the paper's inference rule (Algorithm 2) asks;
- ``num_batches_tracked`` counts the training batches seen, empty ones included (as torch counts them);
- an empty batch (m = 0) has no statistics and leaves the running values as they are.

Every backend's statistics reach the buffers through :func:`update_running_stats`, with one exception made
for speed: in eager mode the ``native`` backend hands the whole call to ATen's ``torch.batch_norm``, which
applies this same convention inside its kernel (tests hold both paths equal to torch and to each other).
"""

from __future__ import annotations

import torch
from torch import Tensor


def advance(num_batches_tracked: Tensor, momentum: float | None) -> float | Tensor:
    """Count one more training batch and return the averaging factor for it.

    With ``momentum=None`` the factor is 1/num_batches_tracked, kept as a tensor so that no host
    synchronisation (and no graph break under ``torch.compile``) is needed to read the counter.
    """
    num_batches_tracked.add_(1)
    if momentum is None:
        return 1.0 / num_batches_tracked
    return momentum


def update_running_stats(running_mean: Tensor | None, running_var: Tensor | None, batch_mean: Tensor,
                         batch_var: Tensor, values_per_channel: int, factor: float | Tensor) -> None:
    """Fold one batch's statistics into the running buffers, in place.

    Args:
        running_mean, running_var: (C,) buffers of any float dtype, or None to leave that one alone.
        batch_mean: μ_B, shape (C,).
        batch_var: σ²_B, the biased variance, shape (C,); stored after Bessel's correction m/(m−1).
        values_per_channel: m, the number of values each channel's statistics were taken over.
        factor: the momentum (a float) or the cumulative-average factor 1/t (a 0-d tensor).
    """
    if values_per_channel == 0:
        return
    bessel = values_per_channel / (values_per_channel - 1)
    with torch.no_grad():
        if running_mean is not None:
            _ema_(running_mean, batch_mean, factor, 1.0)
        if running_var is not None:
            _ema_(running_var, batch_var, factor, bessel)


def _ema_(running: Tensor, batch: Tensor, factor: float | Tensor, scale: float) -> None:
    """running ← (1 − factor)·running + factor·scale·batch, written like ATen so momentum 1 stores the batch."""
    if batch.dtype != running.dtype:
        batch = batch.to(running.dtype)
    if isinstance(factor, Tensor):
        # 1/num_batches_tracked is a float32 tensor: in the buffer's dtype, so float64 buffers keep their digits.
        factor = factor.to(running.dtype)
        running.mul_(1 - factor).add_(batch * (factor * scale))
    else:
        running.mul_(1 - factor).add_(batch, alpha=factor * scale)
