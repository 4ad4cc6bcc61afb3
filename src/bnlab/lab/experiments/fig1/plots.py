"""Figure 1's figures, drawn from the run's records alone.

- ``fig1``: the paper's three panels: (a) test accuracy against steps; (b, c) the {15, 50, 85}th percentiles of
  the input of one sigmoid of the last hidden layer, without and with BN, on one shared scale;
- ``fig1_drift``: the same drift over all units: the drift so far (the range swept by the percentiles up to each
  step), median and interquartile range over units; and each unit's final drift, baseline against BN.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.fig1.claims import (
    MIN_DRIFT_EVALUATIONS,
    Curves,
    curves,
    drift_window,
    judged_seeds,
    unit_drift,
)
from bnlab.lab.experiments.fig1.config import PERCENTILES, Fig1Config
from bnlab.lab.plots import mean_band, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result

__all__ = ["COLORS", "LABELS", "plot"]

COLORS = {"baseline": "#d62728", "bn": "#1f77b4"}  # the paper draws the baseline dashed, BN solid
LABELS = {"baseline": "without BN", "bn": "with BN"}

_STYLE = {"baseline": "--", "bn": "-"}


def plot(config: Fig1Config, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    """Draw the figures from the seeds the verdicts use (:func:`judged_seeds`); with none, what was measured."""
    seeds = judged_seeds(config, records)
    c = curves(records, seeds.judged or None)
    n = len(seeds.judged)
    notes = f" Shaded: ± one standard deviation over {n} seeds." if n > 1 else ""
    if not seeds.judged:
        notes += (" Incomplete run: no seed finished both networks, so the curves show what was measured and "
                  "there is no drift figure.")
    elif seeds.left_out:
        notes += (f" Drawn from seed(s) {', '.join(map(str, seeds.judged))}, the ones the verdicts use; left out: "
                  f"{seeds.describe()}.")
    figures = [_panels(config, c, out_dir, notes)]
    if seeds.judged and set(c) == {"baseline", "bn"} and len(drift_window(c["baseline"])[0]) >= MIN_DRIFT_EVALUATIONS:
        figures.append(_drift(config, c, out_dir))
    return figures


def _panels(config: Fig1Config, c: Mapping[str, Curves], out_dir: Path, notes: str) -> Figure:
    fig, (ax_a, ax_b, ax_c) = new_figure(3)
    trained = []
    for model, curve in c.items():
        # Panel (a) starts after step 0: a line from the untrained network's chance accuracy would draw a
        # vertical drop at the first evaluation.
        after0 = curve.steps > 0
        mean_band(ax_a, curve.steps[after0], curve.accuracy[:, after0], color=COLORS[model],
                  linestyle=_STYLE[model], label=LABELS[model])
        trained.append(curve.accuracy[:, after0].mean(axis=0))
    ax_a.set(title="(a) test accuracy", xlabel="training steps", ylabel="accuracy")
    # Zoomed on the trained range, as in the paper (the differences that matter are a point or two).
    values = np.concatenate(trained) if trained else np.array([])
    values = values[np.isfinite(values)]
    if values.size:
        ax_a.set_ylim(max(0.0, float(values.min()) - 0.02), min(1.0, float(values.max()) + 0.01))
    ax_a.legend(loc="lower right")
    ax_a.grid(alpha=0.3)
    u = config.unit
    for ax, model, letter in ((ax_b, "baseline", "b"), (ax_c, "bn", "c")):
        ax.set(title=f"({letter}) {LABELS[model]}: input of sigmoid {u}", xlabel="training steps")
        ax.grid(alpha=0.3)
        if model not in c:
            ax.text(0.5, 0.5, "not measured (the run stopped before)", transform=ax.transAxes, ha="center",
                    color="gray")
            continue
        curve = c[model]
        for k, p in enumerate(PERCENTILES):
            mean_band(ax, curve.steps, curve.percentiles[:, k, :, u], color=COLORS[model],
                      linewidth=2.0 if p == 50 else 1.0, label=f"{p}th percentile")
    ax_b.set_ylabel("sigmoid input (over the test set)")
    ax_c.sharey(ax_b)
    if ax_b.lines:
        ax_b.legend(loc="best", fontsize="small")
    save(fig, out_dir, "fig1")
    return Figure("fig1", f"Figure 1 on {config.dataset}: (a) test accuracy of the network without BN (dashed) and "
                          f"with BN (solid) at the evaluations after step 0, zoomed on their range; (b, c) the 15th, "
                          f"50th and 85th percentiles over the test set of the input of sigmoid {u} in the last "
                          f"hidden layer, on one shared scale. At step 0 the BN network's running statistics are "
                          f"still their initial values (mean 0, variance 1), so in eval mode it computes exactly the "
                          f"baseline's function.{notes}")


def _drift(config: Fig1Config, c: Mapping[str, Curves], out_dir: Path) -> Figure:
    fig, (ax_t, ax_u) = new_figure(2, width=4.8)
    final: dict[str, np.ndarray] = {}
    for model in ("baseline", "bn"):
        steps, pct = drift_window(c[model])  # (T,), (S, 3, T, H)
        so_far = np.fmax.accumulate(pct, axis=2) - np.fmin.accumulate(pct, axis=2)
        per_unit = so_far.mean(axis=1).mean(axis=0)  # (T, H): mean over percentiles, then seeds
        q25, q50, q75 = np.percentile(per_unit, [25, 50, 75], axis=1)
        ax_t.plot(steps, q50, color=COLORS[model], linestyle=_STYLE[model], label=LABELS[model])
        ax_t.fill_between(steps, q25, q75, color=COLORS[model], alpha=0.2, linewidth=0)
        final[model] = unit_drift(pct).mean(axis=0)
    ax_t.set(title="drift so far, all units (median, IQR)", xlabel="training steps", xlim=(0, None),
             ylabel="range swept by the percentiles")
    ax_t.legend(loc="upper left")
    ax_t.grid(alpha=0.3)
    x, y = final["baseline"], final["bn"]
    ax_u.scatter(x, y, s=12, color=COLORS["bn"], alpha=0.7)
    hi = float(max(x.max(), y.max())) * 1.05 or 1.0  # no drift at all still needs a non-empty scale
    ax_u.plot([0, hi], [0, hi], color="gray", linewidth=1, linestyle=":", label="equal drift")
    ax_u.set(title=f"final drift per unit ({len(x)} units)", xlabel="drift without BN", ylabel="drift with BN",
             xlim=(0, hi), ylim=(0, hi))
    ax_u.legend(loc="upper left")
    ax_u.grid(alpha=0.3)
    save(fig, out_dir, "fig1_drift")
    return Figure("fig1_drift", "The drift of the sigmoid inputs over all units of the last hidden layer, from the "
                                "first evaluation after step 0 on. Left: "
                                "the range swept so far by the 15th, 50th and 85th percentiles (mean of the three), "
                                "median over units with the interquartile range shaded. Right: each unit's drift "
                                "over the whole run; points below the dotted line drift less with BN.")
