"""E2's figures, from the records alone: the noisy-BN training curves and percentile traces (the paper's Figure 2),
ICS through gradients (Figure 3) and the landscape along the gradient as shaded bands (Figure 4).

With several seeds the curves are drawn from the first seed that has them (the caption says which); the
verdicts use every seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.santurkar.claims import LABELS
from bnlab.lab.experiments.santurkar.config import SanturkarConfig, cnn_lr, probed
from bnlab.lab.experiments.santurkar.measures import IcsSeries, ics_series, landscape_series, trace
from bnlab.lab.plots import log_axis, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result

__all__ = ["COLORS", "plot"]

COLORS = {"standard": "#d62728", "bn": "#1f77b4", "bn_noise": "#2ca02c", "noise": "#ff7f0e",
          "bn_same_lr": "#9467bd"}
_STYLE = {"standard": "--", "bn": "-", "bn_noise": "-", "noise": ":", "bn_same_lr": "-."}
Records = Sequence[dict[str, Any]]


def _seed(records: Records, kind: str) -> int | None:
    seeds = sorted({r["seed"] for r in records if r["kind"] == kind})
    return seeds[0] if seeds else None


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot(config: SanturkarConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    """Draw the figures the records allow: training curves and traces, ICS, the landscape."""
    figures = []
    if any(r["kind"] == "eval" and r["net"] == "cnn" for r in records):
        figures.append(_training(config, records, out_dir))
    if any(r["kind"] == "trace" for r in records):
        figures.append(_traces(config, records, out_dir))
    if any(r["kind"] == "ics" for r in records):
        figures.append(_ics(config, records, out_dir))
    if any(r["kind"] == "landscape" for r in records):
        figures.append(_landscape(config, records, out_dir))
    return figures


def _training(config: SanturkarConfig, records: Records, out_dir: Path) -> Figure:
    seed = _seed([r for r in records if r["kind"] == "eval" and r["net"] == "cnn"], "eval")
    fig, axes = new_figure(3, width=4.0, height=3.0)
    for variant in [*config.variants, "bn_same_lr"]:
        evals = sorted((r for r in records if r["kind"] == "eval" and r["net"] == "cnn" and r["seed"] == seed
                        and r["variant"] == variant and r["step"] > 0), key=lambda r: r["step"])
        if not evals:
            continue
        steps = np.array([r["step"] for r in evals])
        for ax, key in zip(axes, ("train_accuracy", "test_accuracy", "train_loss"), strict=True):
            ax.plot(steps, _finite([r[key] for r in evals]), color=COLORS[variant], linestyle=_STYLE[variant],
                    marker="o", markersize=2.5, label=f"{LABELS[variant]} (lr {cnn_lr(config, variant):g})")
    for ax, title in zip(axes, ("training accuracy (train mode)", "test accuracy (eval mode)",
                                "training loss (train mode)"), strict=True):
        ax.set(title=title, xlabel="training steps")
        ax.grid(alpha=0.3)
    log_axis(axes[2])
    axes[0].legend(loc="lower right", fontsize="small")
    save(fig, out_dir, "santurkar_training")
    return Figure("santurkar_training", f"Part (a), as the paper's Figure 2: the CNN's training accuracy and loss "
                                        f"(the mean over each {config.eval_every} steps, in train mode, noise on) and "
                                        f"test accuracy (eval mode, noise off) for each variant, SGD with "
                                        f"momentum {config.momentum:g} at the learning rate in its label (seed "
                                        f"{seed}). In eval mode the noise is off while the layers after it were "
                                        f"trained on noisy inputs, which is why the noisy networks' test accuracy "
                                        f"can be low; the claims read the training accuracy.")


def _traces(config: SanturkarConfig, records: Records, out_dir: Path) -> Figure:
    seed = _seed(records, "trace")
    layers = list(config.trace_layers)
    variants = [v for v in config.variants if any(trace(records, seed, v, k) for k in layers)]  # type: ignore[arg-type]
    fig, axes = new_figure(len(variants), width=3.3, height=2.5, nrows=len(layers), sharex=True)
    for row, layer in enumerate(layers):
        for col, variant in enumerate(variants):
            ax = axes[row, col]
            t = trace(records, seed, variant, layer)  # type: ignore[arg-type]
            if t is not None:
                ax.fill_between(t["steps"], t["p15"], t["p85"], color=COLORS[variant], alpha=0.25, linewidth=0)
                ax.plot(t["steps"], t["p50"], color=COLORS[variant], linewidth=0.9)
            ax.set_title(f"{LABELS[variant]}, layer {layer}", fontsize="small")
            ax.grid(alpha=0.3)
            if row == len(layers) - 1:
                ax.set_xlabel("training steps")
        axes[row, 0].set_ylabel(f"unit {config.unit}'s pre-activation")
    save(fig, out_dir, "santurkar_traces")
    return Figure("santurkar_traces", f"Part (a): the distribution of unit {config.unit}'s pre-activation (the input "
                                      f"of its ReLU, after BN and the noise where they are) in layers "
                                      f"{' and '.join(map(str, layers))}, over the batch and every spatial position "
                                      f"of the training forward pass every {config.trace_every} steps: the line is "
                                      f"the median, the band the 15th to 85th percentiles; each panel on its own "
                                      f"scale (seed {seed}). The noise moves BN + noise's distribution at every "
                                      f"step.")


def _band(ax: Any, x: np.ndarray, per_layer: np.ndarray, color: str, label: str) -> None:
    """The median over layers (columns) and the band from the smallest to the largest layer."""
    with np.errstate(invalid="ignore"):
        ax.plot(x, np.nanmedian(per_layer, axis=1), color=color, label=label, linewidth=1.2)
        ax.fill_between(x, np.nanmin(per_layer, axis=1), np.nanmax(per_layer, axis=1), color=color, alpha=0.15,
                        linewidth=0)


def _ics(config: SanturkarConfig, records: Records, out_dir: Path) -> Figure:
    seed = _seed(records, "ics")
    nets = [n for n in ("cnn", "dln") if any(r["kind"] == "ics" and r["net"] == n for r in records)]
    fig, axes = new_figure(3, width=4.0, height=2.9, nrows=len(nets))
    for row, net in enumerate(nets):
        ax_l2, ax_cos, ax_layer = axes[row]
        for variant in ("standard", probed(config)[1] if net == "cnn" else "bn"):
            s: IcsSeries | None = ics_series(records, seed, net, variant)  # type: ignore[arg-type]
            if s is None:
                continue
            l2 = np.where(np.isfinite(s.l2), s.l2, np.nan)
            _band(ax_l2, s.steps, l2, COLORS[variant], LABELS[variant])  # BN at Standard's lr on the CNN
            _band(ax_cos, s.steps, s.cosine, COLORS[variant], LABELS[variant])
            relative = np.where(np.isfinite(s.relative), s.relative, np.nan)
            ax_layer.plot(s.layers, np.nanmedian(relative, axis=0), color=COLORS[variant], marker="o",
                          markersize=3, linestyle=_STYLE[variant], label=LABELS[variant])
        log_axis(ax_l2)
        log_axis(ax_layer)
        ax_l2.set(title=f"{net.upper()}: ‖G − G'‖₂ (ideally 0)", xlabel="training steps")
        ax_cos.set(title=f"{net.upper()}: cos(G, G') (ideally 1)", xlabel="training steps")
        ax_layer.set(title=f"{net.upper()}: median ‖G − G'‖₂ / ‖G‖₂ per layer", xlabel="layer")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        ax_cos.legend(loc="lower right", fontsize="small")
    save(fig, out_dir, "santurkar_ics")
    return Figure("santurkar_ics", f"Part (b), as the paper's Figure 3: internal covariate shift measured through "
                                   f"gradients (Definition 2.1), Standard and BN at the same learning rate, on each "
                                   f"network (seed {seed}). Left "
                                   f"and middle: over training, the median over layers 2 and up, shaded from the "
                                   f"smallest to the largest layer; right: each layer's median over training of the "
                                   f"relative difference. G is the gradient a layer's weights receive; G' the same "
                                   f"gradient on the same batch after the layers below took their update.")


def _landscape(config: SanturkarConfig, records: Records, out_dir: Path) -> Figure:
    seed = _seed([r for r in records if r["kind"] == "landscape"], "landscape")
    fig, (ax_loss, ax_grad, ax_beta) = new_figure(3, width=4.0, height=3.0)
    for variant in probed(config):
        s = landscape_series(records, seed, "cnn", variant, config.etas)  # type: ignore[arg-type]
        if s is None:
            continue
        color, label = COLORS[variant], LABELS[variant]
        losses = np.where(np.isfinite(s.losses), s.losses, np.nan)
        with np.errstate(invalid="ignore"):
            ax_loss.fill_between(s.steps, np.nanmin(losses, axis=1), np.nanmax(losses, axis=1), color=color,
                                 alpha=0.35, linewidth=0, label=label)
            changes = np.where(np.isfinite(s.grad_changes), s.grad_changes, np.nan)
            ax_grad.fill_between(s.steps, np.nanmin(changes, axis=1), np.nanmax(changes, axis=1), color=color,
                                 alpha=0.35, linewidth=0, label=label)
        beta = s.beta()
        ax_beta.plot(s.steps, np.where(np.isfinite(beta), beta, np.nan), color=color, linestyle=_STYLE[variant],
                     label=label)
    ax_loss.set(title="(a) loss landscape: L(w − η·g)", xlabel="training steps", ylabel="loss")
    ax_grad.set(title="(b) gradient predictiveness: ‖∇L(w − η·g) − g‖₂", xlabel="training steps")
    ax_beta.set(title="(c) effective β-smoothness", xlabel="training steps")
    log_axis(ax_loss)
    log_axis(ax_grad)
    log_axis(ax_beta)
    for ax in (ax_loss, ax_grad, ax_beta):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    save(fig, out_dir, "santurkar_landscape")
    return Figure("santurkar_landscape", f"Part (c), as the paper's Figure 4: at each probed step of the CNNs' "
                                         f"training (every {config.probe_every} steps, Standard and BN both at lr "
                                         f"{config.lr:g}), "
                                         f"moving the weights along the gradient g by η·g for η from "
                                         f"{min(config.etas):g} to {max(config.etas):g}, on the step's batch: the "
                                         f"band spans (a) the loss and (b) the change of the gradient over the step "
                                         f"sizes; (c) the effective β-smoothness, max over η of the change of "
                                         f"gradient over the distance moved (seed {seed}).")
