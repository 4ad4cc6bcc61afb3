"""E6's figures, drawn from the run's records alone.

- ``lr_sweep``: test accuracy and final training loss against the learning rate, both networks, diverged runs
  marked with a cross;
- ``lr_sweep_curves``: the training loss of every run over its steps, one panel per network;
- ``lr_sweep_landscape``: L(w − αg) / L(w) against α, at initialization and after some steps, both networks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.lr_sweep.claims import LABELS, RISE, alpha_div, landscapes, runs_by_key
from bnlab.lab.experiments.lr_sweep.config import LrSweepConfig
from bnlab.lab.plots import log_axis, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result

__all__ = ["COLORS", "plot"]

COLORS = {"plain": "#d62728", "bn": "#1f77b4"}
LOSS_CLIP = (0.1, 20.0)  # the curves' loss axis; a loss beyond it (a run on its way to infinity) sits at the edge
RATIO_CLIP = 1e4  # the landscape's ratio axis; a non-finite ratio is drawn at this height


def plot(config: LrSweepConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    figures = []
    runs = runs_by_key(records)
    if runs:
        figures += [_sweep(config, runs, out_dir), _curves(config, runs, out_dir)]
    found = landscapes(records)
    if found:
        figures.append(_landscape(config, found, out_dir))
    return figures


def _sweep(config: LrSweepConfig, runs: dict[Any, dict[str, Any]], out_dir: Path) -> Figure:
    fig, (ax_acc, ax_loss) = new_figure(2, width=4.6, height=3.2)
    seeds = sorted({k[0] for k in runs})
    for m in config.models:
        lrs = np.array(config.lrs, dtype=float)
        acc = np.full((len(seeds), len(lrs)), np.nan)
        loss = np.full_like(acc, np.nan)
        crosses = []
        for i, s in enumerate(seeds):
            for j, lr in enumerate(config.lrs):
                r = runs.get((s, m, float(lr)))
                if r is None:
                    continue
                if r["diverged"]:
                    crosses.append(lr)
                    continue
                acc[i, j] = r["test_accuracy"] if r["test_accuracy"] is not None else np.nan
                loss[i, j] = r["final_loss"] if r["final_loss"] is not None else np.nan
        for ax, values in ((ax_acc, acc), (ax_loss, loss)):
            ax.plot(lrs, _column_means(values), marker="o", color=COLORS[m], label=LABELS[m], linewidth=1.6)
        if crosses:
            ax_acc.scatter(crosses, [0.12] * len(crosses), marker="x", s=60, color=COLORS[m], linewidths=2,
                           label=f"{LABELS[m]}: diverged")
            ax_loss.scatter(crosses, [config.diverged_loss * 1.5] * len(crosses), marker="x", s=60,
                            color=COLORS[m], linewidths=2)
    for ax in (ax_acc, ax_loss):
        log_axis(ax, "x")
        ax.set_xlabel("learning rate (plain SGD)")
        ax.grid(alpha=0.3)
    ax_acc.set(ylabel="test accuracy", ylim=(0.05, 1.0), title="(a) test accuracy after the run")
    ax_acc.legend(loc="lower left", fontsize="small")
    ax_loss.axhline(config.diverged_loss, color="#555555", linestyle=":", linewidth=1)
    ax_loss.set(ylabel="final training loss", title="(b) final training loss", ylim=(0, config.diverged_loss * 1.7))
    save(fig, out_dir, "lr_sweep")
    many = f" (mean over {len(seeds)} seeds)" if len(seeds) > 1 else ""
    return Figure("lr_sweep", f"One training of {config.epochs} epoch(s) per learning rate{many}: (a) test accuracy "
                              f"(eval mode, running statistics), (b) the mean training loss of the last "
                              f"{config.final_window} steps. A cross marks a run that diverged (loss not finite, or "
                              f"final loss above {config.diverged_loss:g}, the dotted line).")


def _column_means(values: np.ndarray) -> np.ndarray:
    """The mean of each column over its finite values (NaN where there is none), without NumPy's warning."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A running mean over ``window`` steps (shorter at the start); NaN stays NaN."""
    if len(values) < 2 or window < 2:
        return values
    kernel = np.ones(min(window, len(values)))
    sums = np.convolve(values, kernel, mode="full")[: len(values)]
    counts = np.convolve(np.ones(len(values)), kernel, mode="full")[: len(values)]
    return sums / counts


def _curves(config: LrSweepConfig, runs: dict[Any, dict[str, Any]], out_dir: Path) -> Figure:
    from matplotlib import colormaps

    seed = min(k[0] for k in runs)
    fig, axes = new_figure(len(config.models), width=4.6, height=3.2, sharey=True)
    cmap = colormaps["viridis"]
    for ax, m in zip(axes, config.models, strict=True):
        for j, lr in enumerate(config.lrs):
            r = runs.get((seed, m, float(lr)))
            if r is None or not r["losses"]:
                continue
            losses = np.array([math.nan if v is None else v for v in r["losses"]], dtype=float)
            steps = np.arange(1, len(losses) + 1)
            curve = np.clip(_smooth(losses, 10), *LOSS_CLIP)
            color = cmap(j / max(len(config.lrs) - 1, 1))
            ax.plot(steps, curve, color=color, linewidth=1.1, label=f"lr {lr:g}")
            if r["diverged_at"] is not None:
                ax.scatter([r["diverged_at"]], [LOSS_CLIP[1]], marker="x", color=color, s=40, zorder=3)
        log_axis(ax)
        ax.set_ylim(*LOSS_CLIP)
        ax.axhline(config.diverged_loss, color="#555555", linestyle=":", linewidth=1)
        ax.set(title=LABELS[m], xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (running mean of 10 steps)")
    axes[-1].legend(loc="upper right", fontsize="x-small", ncols=2)
    save(fig, out_dir, "lr_sweep_curves")
    return Figure("lr_sweep_curves", f"The training loss of each run over its steps (seed {seed}), one colour per "
                                     f"learning rate. A run whose loss stopped being finite ends with a cross at "
                                     f"the top edge; losses beyond {LOSS_CLIP[1]:g} are drawn at the edge.")


def _landscape(config: LrSweepConfig, found: dict[tuple[int, str, int], dict[str, Any]], out_dir: Path) -> Figure:
    updates = sorted({k[2] for k in found})
    seed = min(k[0] for k in found)
    fig, axes = new_figure(len(updates), width=4.2, height=3.2, sharey=True)
    for ax, u in zip(axes, updates, strict=True):
        for m in config.models:
            r = found.get((seed, m, u))
            if r is None:
                continue
            alphas = np.array(r["alphas"], dtype=float)
            ratios = np.array([math.inf if v is None else v for v in r["ratios"]], dtype=float)
            bad = ~np.isfinite(ratios)
            ax.plot(alphas[~bad], np.clip(ratios[~bad], None, RATIO_CLIP), marker=".", color=COLORS[m],
                    label=LABELS[m], linewidth=1.5)
            if bad.any():
                ax.scatter(alphas[bad], [RATIO_CLIP] * int(bad.sum()), marker="x", color=COLORS[m], s=30)
            a = alpha_div(r["alphas"], r["ratios"])
            if a is not None:
                ax.axvline(a, color=COLORS[m], linestyle="--", linewidth=0.9, alpha=0.8)
        ax.axhline(RISE, color="#555555", linestyle=":", linewidth=1)
        log_axis(ax, "x")
        log_axis(ax)
        ax.set(xlabel="step size α", title="at initialization" if u == 0 else
               f"after {u} steps at lr {config.landscape_lr:g}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L(w − αg) / L(w)")
    axes[0].legend(loc="upper left", fontsize="small")
    save(fig, out_dir, "lr_sweep_landscape")
    return Figure("lr_sweep_landscape", f"The loss along the gradient (seed {seed}): the loss on a batch after a step "
                                        f"of size α along minus its gradient, relative to the loss before. Dotted: "
                                        f"the ratio {RISE:g}; dashed: α_div, where each network's ratio first "
                                        f"exceeds it. Ratios above {RATIO_CLIP:g} are drawn at {RATIO_CLIP:g}; "
                                        f"crosses there: a loss that was not finite.")
