"""Population statistics of a batch-norm layer's inputs, gathered batch by batch (Algorithm 2, lines 8-10).

For batches B of m_B values per channel (N·H·W for an (N, C, H, W) input), with mean μ_B and biased variance
σ²_B, and M = Σ_B m_B:

    E[x] = Σ_B m_B·μ_B / M                                                  (both estimators)

    "paper":  Var[x] = Σ_B m_B·(m_B/(m_B−1))·σ²_B / M
    "pooled": Var[x] = (Σ_B m_B·σ²_B + Σ_B m_B·(μ_B − E[x])²) / (M − 1)

"paper" is line 10 of Algorithm 2, m/(m−1)·E_B[σ²_B], with the expectation weighted by batch size and
Bessel's correction per batch: the semantics of :func:`bnlab.reference.population_statistics`. It leaves out
how far the batch means spread around E[x], so its value depends on how the data was cut into batches (and
it underestimates the variance when batches are not shuffled). "pooled" puts that spread back: it is the
unbiased variance of all M values, the same whatever the batching, and equal to "paper" in expectation for
shuffled batches of equal size. The spread is merged batch by batch (Chan, Golub and LeVeque's pairwise
update) in float64, so no Σx² − (Σx)² cancellation occurs.

A batch with a NaN or an infinity (or values whose squares overflow float64) has non-finite statistics, and one
such batch would make every later estimate NaN. An accumulator made with ``require_finite=True`` refuses it,
raising :class:`NonFiniteBatchError` that names the batch and the layer, before it is merged.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from bnlab._shapes import values_per_channel
from bnlab._stats import batch_moments, mean_var

ESTIMATORS = ("pooled", "paper")
_SHOWN_CHANNELS = 4  # channels named in a NonFiniteBatchError; the rest are counted


class NonFiniteBatchError(ValueError):
    """A batch whose mean or variance at a batch-norm layer is NaN or infinite; the message names both.

    ``layer`` (its name in the model), ``mean`` and ``var`` ((C,) each, the statistics refused) are kept so that
    the same error can be rebuilt elsewhere (on every process of a distributed recalibration).
    """

    def __init__(self, message: str, *, layer: str = "", mean: Tensor | None = None,
                 var: Tensor | None = None) -> None:  # defaults: so that the error pickles
        super().__init__(message)
        self.layer, self.mean, self.var = layer, mean, var


def check_finite_statistics(mean: Tensor, var: Tensor, layer: str, batch: str) -> None:
    """Raise :class:`NonFiniteBatchError` if a channel's ``mean`` or ``var`` ((C,) each) is NaN or ±inf.

    ``batch`` describes the batch for the message (e.g. "batch 3 (samples 96 to 127)"); ``layer`` is the
    batch-norm layer's name in the model.
    """
    error = non_finite_error(mean, var, layer, batch)
    if error is not None:
        raise error


def non_finite_error(mean: Tensor, var: Tensor, layer: str, batch: str) -> NonFiniteBatchError | None:
    """The :class:`NonFiniteBatchError` that :func:`check_finite_statistics` raises, or None if all is finite."""
    bad = ~(torch.isfinite(mean) & torch.isfinite(var))
    if not bool(bad.any()):
        return None
    channels = bad.nonzero().flatten().tolist()
    first = channels[0]
    shown = ", ".join(map(str, channels[:_SHOWN_CHANNELS]))
    if len(channels) > _SHOWN_CHANNELS:
        shown += f" and {len(channels) - _SHOWN_CHANNELS} more"
    where = f"layer {layer!r}" if layer else "a batch-norm layer"
    return NonFiniteBatchError(
        f"{batch or 'a batch'} gives non-finite statistics at {where}: channel(s) {shown} of {bad.numel()} (channel "
        f"{first}: mean {float(mean[first]):.3g}, variance {float(var[first]):.3g}); NaN or infinity reached the "
        f"layer (from the data, or from the layers before it) or its values' squares overflow: fix or drop that batch",
        layer=layer, mean=mean.detach().clone(), var=var.detach().clone(),
    )


class PopulationAccumulator:
    """Running sums for one layer: E[x], Σ m·σ², Σ m·unbiased σ², the spread of the batch means, and counts."""

    def __init__(self, *, require_finite: bool = False) -> None:
        self.require_finite = require_finite  # refuse a batch with non-finite statistics (NonFiniteBatchError)
        self.values = 0  # M = Σ m_B over the batches in the statistics (the weights, after merge_mean_var)
        self.batches = 0
        self.samples = 0  # Σ N_B
        self.sizes: Counter[int] = Counter()  # m_B → batches of that many values per channel
        self.mean: Tensor | None = None  # E[x] so far, (C,) float64
        self.within: Tensor | None = None  # Σ m_B·σ²_B
        self.paper: Tensor | None = None  # Σ m_B·m_B/(m_B−1)·σ²_B
        self.between: Tensor | None = None  # Σ m_B·(μ_B − E[x])²
        self.summaries_only = False  # merge_mean_var was used: the pooled estimate is out of reach

    @property
    def typical_batch(self) -> int | None:
        """The most common m_B (the largest of equally common ones), so that a short last batch does not count."""
        if not self.sizes:
            return None
        return max(self.sizes, key=lambda m: (self.sizes[m], m))

    def count(self, x: Tensor) -> int:
        """Count one mini-batch x of shape (N, C, *) without its statistics; returns m, its values per channel."""
        m = values_per_channel(x)
        if m:
            self.batches += 1
            self.samples += x.shape[0]
            self.sizes[m] += 1
        return m

    def add(self, x: Tensor, layer: str = "", batch: str = "") -> None:
        """Account for one mini-batch x of shape (N, C, *). A batch with no values is skipped.

        With ``require_finite``, a batch whose statistics are not finite raises :class:`NonFiniteBatchError`
        naming ``batch`` (a description, e.g. "batch 3 (samples 96 to 127)") and ``layer``, and is not merged.
        """
        m = values_per_channel(x)
        if m == 0:
            return
        if m < 2:
            where = f"layer {layer!r}" if layer else "a batch-norm layer"
            raise ValueError(
                f"{where} got a batch of shape {tuple(x.shape)}, which has 1 value per channel: a variance needs "
                f"at least 2; use batches of 2 or more samples"
            )
        mu, sigma2 = mean_var(batch_moments(x.detach(), dtype=torch.float64))  # μ_B and σ²_B, biased
        if self.require_finite:
            check_finite_statistics(mu, sigma2, layer, batch)
        self._merge(m, mu, m * sigma2, m * (m / (m - 1)) * sigma2, torch.zeros_like(mu))
        self.count(x)

    def merge_mean_var(self, weight: int, mean: Tensor, var: Tensor) -> None:
        """Fold in a group known only by its mean and unbiased variance, (C,) each, weighted by ``weight``.

        That is another process's cumulative average over ``weight`` batches. E[x] and the "paper" estimate (a
        weighted mean of the groups' unbiased variances) take it in; the pooled estimate needs the groups' sizes
        and spreads, so :meth:`result` refuses it afterwards. Counts (batches, samples) are the caller's.
        """
        self._merge(weight, mean.double(), torch.zeros_like(var, dtype=torch.float64), weight * var.double(),
                    torch.zeros_like(var, dtype=torch.float64))
        self.summaries_only = True

    def _merge(self, m: int, mean: Tensor, within: Tensor, paper: Tensor, between: Tensor) -> None:
        """Fold in a group of m values with its own mean and sums (a batch, or another process's totals)."""
        if self.mean is None or self.within is None or self.paper is None or self.between is None:
            self.values, self.mean, self.within, self.paper, self.between = m, mean, within, paper, between
            return
        total = self.values + m
        delta = mean - self.mean
        self.between = self.between + between + delta.square() * (self.values * m / total)
        self.mean = self.mean + delta * (m / total)
        self.within = self.within + within
        self.paper = self.paper + paper
        self.values = total

    def packed(self, channels: int, device: torch.device) -> Tensor:
        """[M, batches, samples, E[x] (C), Σm·σ² (C), Σm·unbiased (C), spread (C)] as one float64 tensor."""
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        counts = torch.tensor([self.values, self.batches, self.samples], dtype=torch.float64, device=device)
        parts = [zeros if t is None else t.to(device) for t in (self.mean, self.within, self.paper, self.between)]
        return torch.cat([counts, *parts])

    def merge_packed(self, packed: Tensor, channels: int) -> None:
        """Merge another accumulator's :meth:`packed` form (from another process) into this one."""
        values, batches, samples = (round(v) for v in packed[:3].tolist())
        if values:
            mean, within, paper, between = packed[3:].reshape(4, channels).unbind(0)
            self._merge(values, mean, within, paper, between)
        self.batches += batches
        self.samples += samples

    def result(self, estimator: str = "pooled") -> tuple[Tensor, Tensor]:
        """E[x] and the unbiased Var[x] by ``estimator`` ("pooled" or "paper"), (C,) float64."""
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if self.mean is None or self.within is None or self.paper is None or self.between is None:
            raise ValueError("no batch reached this layer, so it has no population statistics")
        if estimator == "paper":
            return self.mean, self.paper / self.values
        if self.summaries_only:
            raise ValueError("the pooled variance needs each group's size and spread; merge_mean_var has only means "
                             "and variances")
        return self.mean, (self.within + self.between) / (self.values - 1)
