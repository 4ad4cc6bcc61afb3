"""The one place where running statistics are updated.

PyTorch's convention, which bnlab keeps so that checkpoints and training curves match torch:

- exponential moving average ``new = (1 − momentum)·old + momentum·batch``. Keras and Flax name the weight
  of the *old* value momentum instead: PyTorch's 0.1 is their 0.9, and their default 0.99 is PyTorch's 0.01;
- ``momentum=None`` is the cumulative average: the factor is 1/t for the t-th batch, so after t batches the
  running value is the plain mean of the t batch statistics;
- the stored variance is the unbiased one, m/(m−1)·σ²_B, as the paper's inference rule (Algorithm 2) asks;
- ``num_batches_tracked`` counts the training batches seen, empty ones included (as torch counts them);
- an empty batch (m = 0) has no statistics and leaves the running values as they are.

It is also the one place where a batch's μ_B and σ²_B are computed with torch ops (:func:`batch_moments`, used by
the reference, the tools and the composed backends) and where partial statistics are merged (:func:`merge_moments`,
Chan, Golub and LeVeque's pairwise formula), so that synchronized, ghost and masked batch norm share one definition.

Every backend's statistics reach the buffers through :func:`update_running_stats`, with one exception made
for speed: in eager mode the ``native`` backend hands the whole call to ATen's ``torch.batch_norm``, which
applies this same convention inside its kernel (tests hold both paths equal to torch and to each other).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from bnlab._shapes import accumulation_dtype, per_channel, reduction_dims, values_per_channel


class Moments(NamedTuple):
    """The statistics of part of a batch, per channel: what a backend's ``stats`` phase returns.

    All three are (C,) tensors of one dtype (float32, or float64 for float64 input). Two parts merge exactly
    (:func:`merge_moments`), so the statistics of a batch split across processes or ghost batches are those of
    the whole; an empty part (count 0, mean 0, m2 0) is the identity of the merge.
    """

    # Values per channel (float; the same for every channel unless a mask says otherwise). The name shadows
    # tuple.count, which nobody calls on moments.
    count: Tensor  # type: ignore[assignment]
    mean: Tensor  # μ = Σx / count
    m2: Tensor  # Σ(x − μ)²: the biased variance is m2 / count, the unbiased m2 / (count − 1)


def batch_moments(x: Tensor, mask: Tensor | None = None, dtype: torch.dtype | None = None) -> Moments:
    """(count, μ_B, Σ(x − μ_B)²) per channel of x (N, C, *), in two passes (never E[x²] − E[x]²).

    Args:
        x: (N, C, *) input of any float dtype.
        mask: None, or a boolean (N, L) tensor for an (N, C, L) input: only the values where it is True count
            (padding left out of the statistics). A channel with no value gets count 0, mean 0 and m2 0.
        dtype: the dtype to compute and return in; default the accumulation dtype of x.
    """
    work = accumulation_dtype(x.dtype) if dtype is None else dtype
    xw = x.to(work)
    dims = reduction_dims(x)
    channels = x.shape[1]
    if mask is None:
        m = values_per_channel(x)
        count = torch.full((channels,), float(m), dtype=work, device=x.device)
        if m == 0:
            return Moments(count, count.clone(), count.clone())
        mean = xw.mean(dims)  # μ_B = 1/m Σ x_i
        m2 = (xw - per_channel(mean, x)).square().sum(dims)  # Σ (x_i − μ_B)²
        return Moments(count, mean, m2)
    weights = _mask_weights(x, mask, work)
    count = weights.sum().expand(channels).clone()
    mean = (xw * weights).sum(dims) / count.clamp_min(1)
    m2 = ((xw - per_channel(mean, x)).square() * weights).sum(dims)
    return Moments(count, mean, m2)


def _mask_weights(x: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    if x.dim() != 3 or mask.dtype != torch.bool or mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"mask must be a boolean tensor of shape (N, L) = {(x.shape[0], *x.shape[2:3])} for an (N, C, L) input; "
            f"got {mask.dtype} {tuple(mask.shape)} for an input of shape {tuple(x.shape)}"
        )
    return mask.to(dtype).unsqueeze(1)  # (N, 1, L): broadcasts over the channels


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two disjoint parts (Chan, Golub and LeVeque), exact in either order.

    An empty part (count 0) leaves the other as it is; two empty parts give an empty part.
    """
    count = a.count + b.count
    delta = b.mean - a.mean
    share = b.count / count.clamp_min(1)  # 0 when both are empty, 1 when only a is
    mean = a.mean + delta * share
    m2 = a.m2 + b.m2 + delta.square() * (a.count * share)
    return Moments(count, mean, m2)


def mean_var(moments: Moments) -> tuple[Tensor, Tensor]:
    """μ and the biased variance σ² = m2 / count of merged moments (what normalizes a batch)."""
    return moments.mean, moments.m2 / moments.count.clamp_min(1)


def is_recomputation() -> bool:
    """True while the autograd engine runs a backward pass: a batch-norm forward then is a recomputation.

    Activation checkpointing (``torch.utils.checkpoint``, reentrant or not) runs the forward a second time inside
    the backward pass to rebuild what it did not keep. That second run must normalize exactly as the first did but
    must not count the batch or fold its statistics into the running ones again (pytorch issue 96136), and a
    synchronized layer must not communicate again. One call into the engine, read only by training calls.
    """
    # (Not while torch.compile traces: a compiled graph's backward is the compiler's, and the engine query would
    # break the graph.)
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def advance(num_batches_tracked: Tensor, momentum: float | None) -> float | Tensor:
    """Count one more training batch and return the averaging factor for it.

    With ``momentum=None`` the factor is 1/num_batches_tracked, kept as a tensor so that no host
    synchronisation (and no graph break under ``torch.compile``) is needed to read the counter.
    """
    num_batches_tracked.add_(1)
    if momentum is None:
        # float64, like the Python float torch computes: 1/3 in float32 would be off in the 8th digit.
        return 1.0 / num_batches_tracked.to(torch.float64)
    return momentum


def update_running_stats(running_mean: Tensor | None, running_var: Tensor | None, batch_mean: Tensor,
                         batch_var: Tensor, values_per_channel: int | Tensor, factor: float | Tensor, *,
                         unbiased: bool = False) -> None:
    """Fold one batch's statistics into the running buffers, in place.

    Args:
        running_mean, running_var: (C,) buffers of any float dtype, or None to leave that one alone.
        batch_mean: μ_B, shape (C,).
        batch_var: σ²_B, the biased variance, shape (C,); stored after Bessel's correction m/(m−1).
        values_per_channel: m, the number of values each channel's statistics were taken over: an int, or a (C,)
            tensor (a masked batch counts per channel; a channel with count 0 keeps its running values).
        factor: the momentum (a float) or the cumulative-average factor 1/t (a 0-d tensor).
        unbiased: ``batch_var`` is already an unbiased variance (ghost batch norm's mean of its ghost batches'
            unbiased variances): stored as it is, without Bessel's factor.
    """
    if isinstance(values_per_channel, Tensor):
        _update_counted(running_mean, running_var, batch_mean, batch_var, values_per_channel, factor)
        return
    if values_per_channel == 0:
        return
    bessel = 1.0 if unbiased else values_per_channel / (values_per_channel - 1)
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
        factor = factor.to(running.dtype)
        running.mul_(1 - factor).add_(batch * (factor * scale))
    else:
        running.mul_(1 - factor).add_(batch, alpha=factor * scale)


def _update_counted(running_mean: Tensor | None, running_var: Tensor | None, batch_mean: Tensor, batch_var: Tensor,
                    count: Tensor, factor: float | Tensor) -> None:
    # The count is on the device (a masked batch): Bessel's factor and the "empty keeps the old value" rule are
    # computed there too, so the update needs no host synchronisation.
    with torch.no_grad():
        seen = count > 0
        for running, batch, scale in ((running_mean, batch_mean, None), (running_var, batch_var, count)):
            if running is None:
                continue
            value = batch if scale is None else batch * (scale / (scale - 1).clamp_min(1))
            weight = torch.where(seen, torch.as_tensor(factor, dtype=running.dtype, device=running.device), 0.0)
            running.mul_(1 - weight).add_(value.to(running.dtype) * weight)
