"""E1b's figures, drawn from the run's records alone.

- ``inception_mini``: the paper's Figure 2 for the mini network: (a) validation accuracy against steps for every
  variant, the baseline's best as a dotted line, a star where each variant first reaches it and a cross where one
  diverged; (b) the mean training loss between evaluations; (c) the norm of all weights;
- ``inception_mini_speedup``: the Figure 3 table as bars: steps to reach Inception's best, as a multiple of
  Inception's own, this run beside the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.inception_mini.claims import Curves, best, curves, judged_seeds, reach_step
from bnlab.lab.experiments.inception_mini.config import BASELINE, VARIANTS, InceptionConfig
from bnlab.lab.plots import log_axis, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result

__all__ = ["COLORS", "PAPER_COLOR", "plot"]

COLORS = {"inception": "#d62728", "bn-baseline": "#1f77b4", "bn-x5": "#2ca02c", "bn-x30": "#9467bd",
          "bn-x5-sigmoid": "#ff7f0e", "inception-x5": "#8c564b", "inception-sigmoid": "#7f7f7f"}
PAPER_COLOR = "#bcbd22"  # the paper's bars in the speed-up figure
DECADES = 10.0  # panels (b, c) switch to a log scale when their values span more than this ratio
_DASHED = {"inception", "inception-x5", "inception-sigmoid"}  # without BN


def plot(config: InceptionConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    """Draw the figures from the seeds the verdicts use; with none, from what was measured."""
    seeds = judged_seeds(config, records)
    c = curves(config, records, seeds.judged or None)
    n = len(seeds.judged)
    notes = f" Curves are the mean over {n} seeds." if n > 1 else ""
    if not seeds.judged:
        notes += " Incomplete run: no seed finished every variant, so the curves show what was measured."
    elif seeds.left_out:
        notes += f" Drawn from seed(s) {', '.join(map(str, seeds.judged))}; left out: {seeds.describe()}."
    base = best(c[BASELINE]) if BASELINE in c else None
    figures = [_curves(config, c, base, out_dir, notes)]
    if base is not None and seeds.judged and len(c) > 1:  # one bar pair of 1.0 says nothing
        figures.append(_speedup(config, c, base, out_dir))
    return figures


def _line(name: str) -> dict[str, Any]:
    return {"color": COLORS[name], "linestyle": "--" if name in _DASHED else "-", "label": VARIANTS[name].label}


def _curves(config: InceptionConfig, c: Mapping[str, Curves], base: tuple[float, int] | None, out_dir: Path,
            notes: str) -> Figure:
    fig, (ax_a, ax_l, ax_w) = new_figure(3, width=4.6, height=4.0)
    for name, curve in c.items():
        mean = curve.mean_accuracy()
        keep = np.isfinite(mean)
        ax_a.plot(curve.steps[keep], mean[keep], **_line(name))
        if base is not None and (reach := reach_step(curve, base[0])) is not None:
            ax_a.plot([reach], [mean[list(curve.steps).index(reach)]], marker="*", markersize=11,
                      color=COLORS[name], linestyle="none")
        for stop in curve.stopped[curve.diverged]:
            ax_a.plot([stop], [0.1], marker="x", markersize=10, markeredgewidth=2, color=COLORS[name],
                      linestyle="none")
        loss = curve.loss.mean(axis=0)
        keep_l = np.isfinite(loss) & (loss > 0)
        ax_l.plot(curve.steps[keep_l], loss[keep_l], **_line(name))
        norm = curve.weight_norm.mean(axis=0)
        keep_w = np.isfinite(norm) & (norm > 0)
        ax_w.plot(curve.steps[keep_w], norm[keep_w], **_line(name))
    if base is not None:
        ax_a.axhline(base[0], color=COLORS[BASELINE], linestyle=":", linewidth=1)
    ax_a.set(title="(a) validation accuracy", xlabel="training steps", ylabel="accuracy", ylim=(0, 1))
    if ax_a.lines:  # one legend for the three panels, below them: inside (a) it would hide the curves at chance
        fig.legend(handles=[line for line in ax_a.lines if not line.get_label().startswith("_")],
                   loc="outside lower center", ncol=min(len(c), 4), fontsize="small", frameon=False)
    ax_l.set(title="(b) training loss (mean between evaluations)", xlabel="training steps")
    ax_w.set(title="(c) norm of all weights", xlabel="training steps")
    for ax in (ax_l, ax_w):
        values = np.concatenate([line.get_ydata() for line in ax.lines]) if ax.lines else np.array([])
        if values.size and values.max() > DECADES * values.min():  # a blow-up: show it on a log scale
            log_axis(ax)
    for ax in (ax_a, ax_l, ax_w):
        ax.grid(alpha=0.3)
    save(fig, out_dir, "inception_mini")
    star = "" if base is None else (f" The dotted line is Inception's best, {100 * base[0]:.2f}% at step "
                                      f"{base[1]:,}; a star marks where a variant first reaches it.")
    return Figure("inception_mini", f"The mini Inception on {config.dataset}, batch {config.batch_size}: "
                                    f"(a) accuracy on the {config.validation:,} held-out validation images at each "
                                    f"evaluation (every {config.eval_every:,} steps), networks without BN dashed."
                                    f"{star} A cross marks a divergence (training loss not finite; the network "
                                    f"stops there). (b) the mean training loss since the previous evaluation; "
                                    f"(c) the Euclidean norm of all the network's parameters.{notes}")


def _speedup(config: InceptionConfig, c: Mapping[str, Curves], base: tuple[float, int], out_dir: Path) -> Figure:
    names = [n for n in config.variants if n in c]
    fig, (ax,) = new_figure(1, width=7.0, height=0.5 * len(names) + 1.4)
    y = np.arange(len(names))
    ours, paper = [], []
    for name in names:
        reach = base[1] if name == BASELINE else reach_step(c[name], base[0])
        ours.append(np.nan if reach is None else reach / base[1])
        p = VARIANTS[name].paper_steps
        paper.append(np.nan if p is None else p / VARIANTS[BASELINE].paper_steps)  # type: ignore[operator]
    ax.barh(y - 0.2, np.nan_to_num(ours), height=0.38, color=[COLORS[n] for n in names], label="this run")
    ax.barh(y + 0.2, np.nan_to_num(paper), height=0.38, color=PAPER_COLOR, label="paper (ImageNet)")
    for i, (o, p) in enumerate(zip(ours, paper, strict=True)):
        if np.isnan(o):
            ax.text(0.02, i - 0.2, "never reaches it", va="center", fontsize="small",
                    transform=ax.get_yaxis_transform())
        if np.isnan(p):
            ax.text(0.02, i + 0.2, "paper: never / not given", va="center", fontsize="small", color="gray",
                    transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [VARIANTS[n].label for n in names])
    ax.invert_yaxis()
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set(xlabel="steps to reach Inception's best, × Inception's own",
           xlim=(0, max(1.1, float(np.nanmax([*ours, 1.0])) * 1.1)))
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    save(fig, out_dir, "inception_mini_speedup")
    return Figure("inception_mini_speedup",
                  f"Figure 3 as bars: the steps each variant needs to reach Inception's best validation accuracy "
                  f"({100 * base[0]:.2f}% here, 72.2% in the paper), as a multiple of the steps Inception itself "
                  f"needs ({base[1]:,} here, 31.0·10⁶ in the paper). Shorter is faster; missing bars never reach it.")
