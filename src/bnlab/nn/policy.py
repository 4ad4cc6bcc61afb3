"""Where a batch-norm layer's statistics come from, declared per layer: :class:`StatsPolicy`.

torch decides by mode alone: batch statistics and an update in ``.train()``, running statistics in ``.eval()``.
A policy overrides that per layer, and survives ``.train()``/``.eval()`` and ``copy.deepcopy`` (it is not part of
the state_dict). :func:`bnlab.freeze` sets it, :func:`bnlab.recalibrate` lifts it for its duration with
:func:`policy_override`, and :func:`bnlab.fold` reads it (a layer that normalizes with batch statistics at inference
cannot be folded).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["FOLLOW_MODE", "NON_FINITE", "NORMALIZE_WITH", "SMALL_BATCH", "StatsPolicy", "UpdateGuard",
           "check_batch_policies", "policy_override", "small_batch_error"]

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


# ------------------------------------------------------------------ batch policies: small and non-finite batches
# Two per-layer settings beside the StatsPolicy, kept as their own attributes (``small_batch``, ``non_finite``) so
# that bnlab.freeze and policy_override, which replace the StatsPolicy, leave them alone.

#: ``small_batch``: what a training batch with one value per channel does. "error" (torch's behaviour; the message
#: names the layer and the remedies) or "running": normalize it with the running statistics, which stay untouched.
SMALL_BATCH = ("error", "running")
#: ``non_finite``: what a batch whose statistics are not finite does to the running statistics. "propagate"
#: (torch's: they become NaN for good), "skip_update" (running statistics and counter left as they were, the batch
#: counted in ``batches_skipped``, a warning once) or "error" (raise, naming the layer, having changed nothing).
NON_FINITE = ("propagate", "skip_update", "error")


def check_batch_policies(small_batch: object, non_finite: object) -> None:
    if small_batch not in SMALL_BATCH:
        raise ValueError(f"small_batch must be one of {SMALL_BATCH}, got {small_batch!r}")
    if non_finite not in NON_FINITE:
        raise ValueError(f"non_finite must be one of {NON_FINITE}, got {non_finite!r}")


def small_batch_error(layer: str, shape: torch.Size) -> ValueError:
    return ValueError(
        f"{layer}: Expected more than 1 value per channel when training, got input size {shape}: a variance "
        f"needs at least 2 values. Remedies: a batch of 2 or more; .eval() to use the running statistics; "
        f"small_batch='running' on this layer to normalize such batches with the running statistics"
    )


class UpdateGuard:
    """Undo a running-statistics update that made them non-finite, without a host synchronisation.

    Built before the update (it copies the running buffers and the counter: 2·C + 1 values), :meth:`settle` after
    it: ``ok`` = every running value is finite, a 0-d tensor on the device, and each buffer becomes
    ``torch.where(ok, new, old)``. A batch whose statistics are NaN or ±∞ is then as if never seen (the counter
    included) and ``batches_skipped`` (a 0-d tensor attribute, outside the state_dict) counts it. Only the warning
    ("skip_update", once per layer) and the error ("error") read ``ok`` on the host: free on the CPU, where
    there is no queue to wait for; on an accelerator "skip_update" never reads it (the count is there to be read)
    and "error" waits for the batch (an opt-in synchronisation), or, while torch.compile traces, asserts on the
    device (``torch._assert_async``).
    """

    def __init__(self, module: nn.Module, running_mean: Tensor, running_var: Tensor,
                 counter: Tensor | None) -> None:
        self.module, self.buffers = module, (running_mean, running_var, counter)
        self.saved = tuple(None if t is None else t.clone() for t in self.buffers)

    def settle(self) -> None:
        running_mean, running_var, _ = self.buffers
        with torch.no_grad():
            ok = torch.isfinite(running_mean).all() & torch.isfinite(running_var).all()
            for buffer, old in zip(self.buffers, self.saved, strict=True):
                if buffer is not None and old is not None:
                    buffer.copy_(torch.where(ok, buffer, old))
            skipped = self.module.__dict__.get("batches_skipped")
            if skipped is None or skipped.device != running_mean.device:
                skipped = torch.zeros((), dtype=torch.int64, device=running_mean.device) if skipped is None \
                    else skipped.to(running_mean.device)
                self.module.__dict__["batches_skipped"] = skipped
            skipped.add_((~ok).to(torch.int64))
        layer = type(self.module).__name__
        if self.module.non_finite == "error":
            message = (f"{layer}: this batch's statistics are not finite (NaN or inf in the input or an overflow); "
                       f"the running statistics were left as they were. Find the source of the non-finite values, "
                       f"or set non_finite='skip_update' to skip such batches")
            if torch.compiler.is_compiling():
                torch._assert_async(ok, message)
            elif not bool(ok):
                raise FloatingPointError(message)
        elif (not torch.compiler.is_compiling() and running_mean.device.type == "cpu"
              and not self.module.__dict__.get("_bnlab_warned_non_finite") and not bool(ok)):
            self.module.__dict__["_bnlab_warned_non_finite"] = True
            warnings.warn(f"{layer}: skipped the running-statistics update of a batch whose statistics are not "
                          f"finite (non_finite='skip_update'); the layer counts such batches in batches_skipped",
                          RuntimeWarning, stacklevel=4)
