"""Where a batch-norm layer's statistics come from, declared per layer: :class:`StatsPolicy`.

torch decides by mode alone: batch statistics and an update in ``.train()``, running statistics in ``.eval()``.
A policy overrides that per layer, and survives ``.train()``/``.eval()`` and ``copy.deepcopy`` (it is not part of
the state_dict). :func:`bnlab.freeze` sets it, :func:`bnlab.recalibrate` lifts it for its duration with
:func:`policy_override`, and :func:`bnlab.fold` reads it (a layer that normalizes with batch statistics at inference
cannot be folded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

__all__ = ["FOLLOW_MODE", "NORMALIZE_WITH", "StatsPolicy", "policy_override"]

NORMALIZE_WITH = ("batch", "running", None)


@dataclass(frozen=True)
class StatsPolicy:
    """A layer's choice of statistics, each field None to follow the mode as torch does.

    Attributes:
        normalize_with: ``"batch"`` or ``"running"``: the statistics that normalize, whatever the mode.
        update_stats: True (every forward updates the running statistics, in eval too) or False (never).
    """

    normalize_with: str | None = None
    update_stats: bool | None = None

    def __post_init__(self) -> None:
        if self.normalize_with not in NORMALIZE_WITH:
            raise ValueError(f"normalize_with must be 'batch', 'running' or None, got {self.normalize_with!r}")
        if self.update_stats is not None and not isinstance(self.update_stats, bool):
            raise TypeError(f"update_stats must be True, False or None, got {self.update_stats!r}")

    @property
    def follows_mode(self) -> bool:
        """True when the policy changes nothing (the layer behaves as torch's)."""
        return self.normalize_with is None and self.update_stats is None

    def decide(self, use_batch_stats: bool, update: bool, has_stats: bool, layer: str) -> tuple[bool, bool]:
        """(normalize with batch statistics?, update the running ones?), from what the mode alone decides."""
        if self.normalize_with is not None:
            use_batch_stats = self.normalize_with == "batch"
            if not use_batch_stats and not has_stats:
                raise RuntimeError(
                    f"{layer} is set to normalize with running statistics but has none (track_running_stats="
                    f"False); set normalize_with='batch' or build it with track_running_stats=True"
                )
        if self.update_stats is not None:
            update = self.update_stats and has_stats
        return use_batch_stats, update


#: The default: statistics by mode, as in torch.
FOLLOW_MODE = StatsPolicy()


@contextmanager
def policy_override(modules: Iterable[nn.Module], policy: StatsPolicy = FOLLOW_MODE) -> Iterator[None]:
    """Give ``modules`` (bnlab batch-norm layers) ``policy`` for the duration of the block, then restore theirs."""
    chosen = list(modules)
    saved = [module.stats_policy for module in chosen]
    try:
        for module in chosen:
            setattr(module, "stats_policy", policy)  # noqa: B010 (mypy types Module attributes as tensors)
        yield
    finally:
        for module, previous in zip(chosen, saved, strict=True):
            setattr(module, "stats_policy", previous)  # noqa: B010
