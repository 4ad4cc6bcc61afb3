"""How the tools feed a batch to a model: a tensor, an (inputs, labels, ...) pair, or the user's own callable."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn

#: ``forward(model, batch) -> output``: how to run a model on one item of the user's batches.
Forward = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(batch[0])`` for a tuple or list such as a DataLoader's (x, y)."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])
    raise TypeError(
        f"cannot tell how to feed a batch of type {type(batch).__name__} to the model; batches should be tensors "
        f"or (inputs, labels) pairs, or pass forward=, e.g. forward=lambda model, batch: model(**batch)"
    )


def labels_of(batch: Any) -> Tensor | None:
    """The labels of an (inputs, labels, ...) batch, None for anything else."""
    if isinstance(batch, tuple | list) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    return None


def take(batches: Any, num_batches: int | None, what: str) -> Iterator[Any]:
    """An iterator over at most ``num_batches`` items of ``batches`` (all of them for None); checks eagerly."""
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(
            f"{what} needs an iterable of batches (a DataLoader, a list of tensors, ...), got "
            f"{type(batches).__name__}"
        ) from None
    return iterator if num_batches is None else itertools.islice(iterator, num_batches)
