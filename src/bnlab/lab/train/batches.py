"""Mini-batches from tensors in memory, and the check that keeps non-finite data out of training.

A NaN or an infinity in one training example poisons batch norm's running statistics for good (PyTorch issue
90342) and, through the gradients, every weight. The lab refuses such data before the first step, naming the
tensor and the first example that holds one, instead of reporting a "divergence" thousands of steps later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["NonFiniteDataError", "batches", "check_finite"]


class NonFiniteDataError(ValueError):
    """Data that holds NaN or infinite values; the message names the data and the first example concerned."""


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteDataError` if the floating-point ``tensor`` (examples along dim 0) holds a NaN or an
    infinity; ``what`` says where it came from (``"fashion-mnist training images"``). One pass, one host read."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 0 else tensor.reshape(1, 1)
    bad_rows = ~torch.isfinite(rows).all(dim=1)
    if not bool(bad_rows.any()):
        return
    where = torch.nonzero(bad_rows).flatten()
    first = int(where[0])
    row = rows[first]
    value = row[~torch.isfinite(row)][0].item()
    raise NonFiniteDataError(
        f"{what} hold non-finite values: {len(where)} of {rows.shape[0]} examples, the first at index {first} "
        f"({value}); a batch with one would poison batch norm's running statistics and every weight; drop those "
        f"examples (keep rows where torch.isfinite is true) or repair them before training")


def batches(tensors: Sequence[Tensor], batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
    """Endless mini-batches of ``tensors`` (same first dimension, e.g. images and labels): each epoch a fresh
    permutation, cut into contiguous slices (the last partial one dropped); the tensors stay paired.

    Permuting once per epoch costs one gather per epoch; the slices are views, so a step pays no indexing.
    """
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"the tensors to batch have different lengths: {[t.shape[0] for t in tensors]}")
    if not 0 < batch_size <= n:
        raise ValueError(f"batch size {batch_size} must be between 1 and the number of training examples ({n})")
    while True:
        order = torch.randperm(n, generator=generator).to(tensors[0].device)
        shuffled = [t[order] for t in tensors]
        for start in range(0, n - batch_size + 1, batch_size):
            yield tuple(t[start:start + batch_size] for t in shuffled)
