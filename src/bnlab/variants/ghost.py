"""Ghost batch norm (Hoffer, Hubara and Soudry, 2017) over the backend phases.

The batch is cut along dim 0 into ghost batches of ``virtual_batch_size`` samples (the last may be smaller), each
normalized with its own statistics. No Python loop per ghost batch: the G full ghost batches of an (N, C, *S) input
are laid out as one (v, G·C, *S) tensor, in which each (ghost batch, channel) pair is a channel, so one ``stats``,
one ``elemt`` and one pair of backward phases serve them all (γ and β repeated G times); a smaller last ghost
batch is a second call of the same phases. The running statistics move once per call, with the mean over ghost
batches of their means and of their unbiased variances (tf.keras's rule), whatever their sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._shapes import accumulation_dtype, memory_format_of, per_channel, reduction_dims, values_per_channel
from bnlab.kernels.base import Backend
from bnlab.variants.call import VariantCall, affine

__all__ = ["GhostCall", "check_virtual_batch_size"]


def check_virtual_batch_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"virtual_batch_size must be a positive int (samples per ghost batch), got {value!r}")
    return value


class _Part:
    """One arrangement of ghost batches as channels: ``groups`` ghost batches of ``size`` samples each."""

    def __init__(self, start: int, groups: int, size: int) -> None:
        self.start, self.groups, self.size = start, groups, size

    def take(self, t: Tensor) -> Tensor:
        """(groups·size, C, *S) rows of t → (size, groups·C, *S)."""
        rows = t[self.start:self.start + self.groups * self.size]
        if self.groups == 1:
            return rows
        rest = rows.shape[1:]
        grouped = rows.reshape(self.groups, self.size, *rest).transpose(0, 1)
        return grouped.reshape(self.size, self.groups * rest[0], *rest[1:])

    def give(self, t: Tensor, channels: int) -> Tensor:
        """The inverse of :meth:`take`."""
        if self.groups == 1:
            return t
        spatial = t.shape[2:]
        ungrouped = t.reshape(self.size, self.groups, channels, *spatial).transpose(0, 1)
        return ungrouped.reshape(self.groups * self.size, channels, *spatial)

    def repeat(self, v: Tensor | None) -> Tensor | None:
        """A per-channel vector (γ or β) for the (size, groups·C, *S) layout: repeated once per ghost batch."""
        return v if v is None or self.groups == 1 else v.repeat(self.groups)


class GhostCall(VariantCall):
    """One training call of ghost batch norm with ghost batches of ``virtual_batch_size`` samples."""

    def __init__(self, eps: float, virtual_batch_size: int, layer: str = "GhostBatchNorm") -> None:
        super().__init__(eps)
        self.virtual_batch_size, self.layer = virtual_batch_size, layer

    def _parts(self, x: Tensor) -> list[_Part]:
        n, v = x.shape[0], self.virtual_batch_size
        full, last = divmod(n, v)
        parts = [_Part(0, full, v)] if full else []
        return parts + ([_Part(full * v, 1, last)] if last else [])

    def check(self, x: Tensor) -> None:
        per_sample = values_per_channel(x) // max(x.shape[0], 1)
        smallest = min(x.shape[0], self.virtual_batch_size, x.shape[0] % self.virtual_batch_size or x.shape[0])
        if x.shape[0] and smallest * per_sample < 2:
            raise ValueError(
                f"{self.layer}: a ghost batch of {smallest} sample(s) has {smallest * per_sample} value per channel "
                f"(batch of {x.shape[0]}, virtual_batch_size={self.virtual_batch_size}); each ghost batch needs at "
                f"least 2: use a batch size that leaves no single-sample ghost batch, or a larger virtual_batch_size"
            )

    def _combine(self, per_part: list[tuple[Tensor, Tensor, Tensor]], channels: int) -> None:
        # Per ghost batch (groups × C): means and unbiased variances; then their plain mean over ghost batches.
        means = torch.cat([m.reshape(-1, channels) for m, _, _ in per_part])
        unbiased = torch.cat([(m2 / (c - 1)).reshape(-1, channels) for _, m2, c in per_part])
        self.mean, self.unbiased_var = means.mean(0), unbiased.mean(0)

    def forward(self, backend: Backend, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        channels, outputs, moments = x.shape[1], [], []
        self.saved: list[tuple[Tensor, Tensor, Tensor]] = []
        for part in self._parts(x):
            xp = part.take(x)
            mom = backend.stats(xp)
            mean, var = _stats.mean_var(mom)
            invstd = torch.rsqrt(var + self.eps)
            outputs.append(part.give(backend.elemt(xp, mean, invstd, part.repeat(weight), part.repeat(bias)),
                                     channels))
            moments.append((mom.mean, mom.m2, mom.count))
            self.saved.append((mean, invstd, mom.count))
        self._combine(moments, channels)
        return _join(outputs, x)

    def backward(self, backend: Backend, grad_y: Tensor, x: Tensor, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        channels, dxs = x.shape[1], []
        acc = accumulation_dtype(x.dtype)
        dweight = torch.zeros(channels, dtype=acc, device=x.device)
        dbias = torch.zeros_like(dweight)
        for part, (mean, invstd, count) in zip(self._parts(x), self.saved, strict=True):
            xp, dyp = part.take(x), part.take(grad_y)
            w, b = part.repeat(weight), part.repeat(bias)
            sums = backend.backward_reduce(dyp, xp, mean, invstd, w, b)
            dx, _ = backend.backward_elemt(dyp, xp, mean, invstd, w, b, sums, count)
            dxs.append(part.give(dx, channels))
            dweight += sums.sum_dz_xhat.reshape(-1, channels).sum(0)
            dbias += sums.sum_dz.reshape(-1, channels).sum(0)
        return _join(dxs, x), dweight, dbias

    def formula(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        channels, outputs, moments = x.shape[1], [], []
        for part in self._parts(x):
            xp = part.take(x).to(accumulation_dtype(x.dtype))
            dims = reduction_dims(xp)
            count = torch.full((xp.shape[1],), float(values_per_channel(xp)), dtype=xp.dtype, device=xp.device)
            mean = xp.mean(dims)
            centred = xp - per_channel(mean, xp)
            m2 = centred.square().sum(dims)
            xhat = centred * per_channel(torch.rsqrt(m2 / count + self.eps), xp)
            outputs.append(part.give(xhat, channels))
            moments.append((mean.detach(), m2.detach(), count))
        self._combine(moments, channels)
        return affine(torch.cat(outputs) if len(outputs) > 1 else outputs[0], weight, bias, x)

    def update(self, running_mean: Tensor | None, running_var: Tensor | None, factor: float | Tensor) -> None:
        _stats.update_running_stats(running_mean, running_var, self.mean, self.unbiased_var, 1, factor,
                                    unbiased=True)


def _join(parts: list[Tensor], like: Tensor) -> Tensor:
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out.contiguous(memory_format=memory_format_of(like))
