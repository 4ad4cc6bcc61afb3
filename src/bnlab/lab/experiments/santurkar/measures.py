"""E2's numbers from the records: final training accuracies, the percentile traces' movement, ICS and landscape
summaries. Pure functions over the records, shared by the claims and the figures.

A value written as null (a NaN or an infinity the run measured) is read back as +inf where larger means worse
(a loss, a change of gradient), so a landscape that blew up counts as rough, not as missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Final", "IcsSeries", "LandscapeSeries", "final", "ics_series", "landscape_series", "median_step_change",
           "trace"]

Records = Sequence[dict[str, Any]]


def _value(v: float | None) -> float:
    return math.inf if v is None else float(v)


@dataclass(frozen=True)
class Final:
    """How one network's training ended: the last evaluation's mean training accuracy and loss since the one
    before (train mode), its test accuracy, and whether the loss stopped being finite."""

    step: int
    train_accuracy: float | None
    train_loss: float | None
    test_accuracy: float | None
    diverged: bool


def final(records: Records, seed: int, net: str, variant: str) -> Final | None:
    """The end of ``variant``'s training on ``net`` in ``seed``, or None when its unit did not finish."""
    end = next((r for r in records if r["kind"] == "end" and (r["seed"], r["net"], r["variant"]) ==
                (seed, net, variant)), None)
    if end is None:
        return None
    evals = sorted((r for r in records if r["kind"] == "eval" and (r["seed"], r["net"], r["variant"]) ==
                    (seed, net, variant)), key=lambda r: r["step"])
    if not evals:
        return Final(0, None, None, None, bool(end["diverged"]))
    last = evals[-1]
    diverged = bool(end["diverged"]) or (last["step"] > 0 and last["train_loss"] is None)
    return Final(last["step"], last["train_accuracy"], last["train_loss"], last["test_accuracy"], diverged)


def trace(records: Records, seed: int, variant: str, layer: int) -> dict[str, np.ndarray] | None:
    """One traced layer's ``steps`` (T,) and percentiles ``p15``, ``p50``, ``p85`` (T,) (NaN where not finite)."""
    found = next((r for r in records if r["kind"] == "trace" and (r["seed"], r["variant"], r["layer"]) ==
                  (seed, variant, layer)), None)
    if found is None:
        return None
    out = {"steps": np.asarray(found["steps"], dtype=float)}
    for key in ("p15", "p50", "p85"):
        out[key] = np.array([np.nan if v is None else v for v in found[key]], dtype=float)
    return out


def median_step_change(values: np.ndarray) -> float:
    """The median, over consecutive traced steps, of |Δ value|: how much a percentile moves from one traced step
    to the next (+inf when a value is not finite)."""
    if len(values) < 2:
        return math.nan
    if not np.isfinite(values).all():
        return math.inf
    return float(np.median(np.abs(np.diff(values))))


@dataclass(frozen=True)
class IcsSeries:
    """One network's ICS probes: ``steps`` (P,), ``layers`` (L,), and (P, L) arrays of ‖G − G'‖₂, ‖G‖₂,
    cos(G, G') and the relative ‖G − G'‖₂ / ‖G‖₂."""

    steps: np.ndarray
    layers: np.ndarray
    l2: np.ndarray
    grad_norm: np.ndarray
    cosine: np.ndarray

    @property
    def relative(self) -> np.ndarray:
        """‖G − G'‖₂ / ‖G‖₂; NaN where G is exactly zero (a dead layer: no direction to shift), which the
        medians skip."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.grad_norm > 0, self.l2 / self.grad_norm, np.nan)


def _of(records: Records, kind: str, seed: int, net: str, variant: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["kind"] == kind and (r["seed"], r["net"], r["variant"]) ==
                   (seed, net, variant)), key=lambda r: r["step"])


def ics_series(records: Records, seed: int, net: str, variant: str) -> IcsSeries | None:
    """The ICS probes of ``variant`` on ``net`` in ``seed``, or None when there are none."""
    rows = _of(records, "ics", seed, net, variant)
    if not rows:
        return None

    def matrix(key: str, missing: float) -> np.ndarray:
        return np.array([[missing if v is None else v for v in r[key]] for r in rows], dtype=float)

    return IcsSeries(np.array([r["step"] for r in rows]), np.asarray(rows[0]["layers"], dtype=int),
                     matrix("l2", math.inf), matrix("grad_norm", math.inf), matrix("cosine", math.nan))


@dataclass(frozen=True)
class LandscapeSeries:
    """One network's landscape probes: ``steps`` (P,), ``etas`` (E,), ``loss`` and ``grad_norm`` (P,) at the
    probe's weights, ``losses`` and ``grad_changes`` (P, E) along the gradient."""

    steps: np.ndarray
    etas: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    losses: np.ndarray
    grad_changes: np.ndarray

    def loss_range(self) -> np.ndarray:
        """(P,): max − min over η of L(w − η·g): the loss variation (+inf when a loss is not finite)."""
        with np.errstate(invalid="ignore"):
            span = self.losses.max(axis=1) - self.losses.min(axis=1)
        return np.where(np.isfinite(self.losses).all(axis=1), span, np.inf)

    def predictiveness(self) -> np.ndarray:
        """(P,): max over η of ‖∇L(w − η·g) − g‖₂ / ‖g‖₂: the largest change of the gradient, relative to it."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.grad_norm > 0, self.grad_changes.max(axis=1) / self.grad_norm, np.inf)

    def beta(self) -> np.ndarray:
        """(P,): the effective β-smoothness, max over η of ‖∇L(w − η·g) − g‖₂ / ‖η·g‖₂."""
        with np.errstate(divide="ignore", invalid="ignore"):
            per_eta = self.grad_changes / (self.etas[None, :] * self.grad_norm[:, None])
            return np.where(self.grad_norm > 0, per_eta.max(axis=1), np.inf)


def landscape_series(records: Records, seed: int, net: str, variant: str,
                     etas: Iterable[float]) -> LandscapeSeries | None:
    """The landscape probes of ``variant`` on ``net`` in ``seed``, or None when there are none."""
    rows = _of(records, "landscape", seed, net, variant)
    if not rows:
        return None
    return LandscapeSeries(np.array([r["step"] for r in rows]), np.asarray(list(etas), dtype=float),
                           np.array([_value(r["loss"]) for r in rows]),
                           np.array([_value(r["grad_norm"]) for r in rows]),
                           np.array([[_value(v) for v in r["losses"]] for r in rows]),
                           np.array([[_value(v) for v in r["grad_changes"]] for r in rows]))
