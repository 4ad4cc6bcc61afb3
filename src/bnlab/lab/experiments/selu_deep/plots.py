"""E3's figures, drawn from the run's records alone.

- ``selu_deep_epochs``: validation accuracy and training loss per epoch, each network, beside seed 004's SELU run
  and Géron's HOML3 numbers;
- ``selu_deep_gradients``: each layer's ‖∂L/∂W‖ / ‖W‖ at initialization, for the trained networks;
- ``selu_deep_diagnostic``: each layer's std and mean at initialization, for the diagnostic's networks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.selu_deep.claims import (
    DIAGNOSTIC_LABELS,
    GERON_HOML3,
    LABELS,
    SEED_004,
    SELU_STD,
    diagnostics,
    epochs,
    gradients,
)
from bnlab.lab.experiments.selu_deep.config import SeluDeepConfig
from bnlab.lab.plots import log_axis, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result

__all__ = ["COLORS", "DIAGNOSTIC_COLORS", "plot"]

COLORS = {"selu": "#1b9e77", "relu": "#d95f02", "relu_bn": "#7570b3", "selu_dropout": "#e7298a"}
DIAGNOSTIC_COLORS = {"selu_lecun": "#1b9e77", "relu_he": "#d95f02", "relu_lecun": "#a6761d", "tanh_small": "#666666"}
SEED_COLOR = "#000000"
STD_FLOOR = 1e-20  # the diagnostic's std axis: a vanishing line leaves the panel below this


def plot(config: SeluDeepConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    figures = []
    logs = epochs(records)
    if logs:
        figures.append(_epochs(config, logs, out_dir))
    grads = gradients(records)
    if grads:
        figures.append(_gradients(config, grads, out_dir))
    found = diagnostics(records)
    if found:
        figures.append(_diagnostic(config, found, out_dir))
    return figures


def _gradients(config: SeluDeepConfig, grads: dict[tuple[int, str], list[float | None]], out_dir: Path) -> Figure:
    fig, (ax,) = new_figure(1, width=6.0, height=3.3)
    labelled = set()
    for (_, model), ratios in sorted(grads.items()):
        values = np.array([np.nan if v is None else v for v in ratios], dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values, color=COLORS[model], linewidth=1.4,
                label=LABELS[model] if model not in labelled else None)
        labelled.add(model)
    log_axis(ax)
    ax.set(xlabel="linear layer (the last is the output layer)", ylabel="‖∂L/∂W‖ / ‖W‖",
           title="gradients at initialization")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="x-small")
    save(fig, out_dir, "selu_deep_gradients")
    return Figure("selu_deep_gradients", f"Before training, on one batch of {config.batch_size} training images: "
                                         f"each linear layer's weight gradient relative to the weight's size, i.e. "
                                         f"how far one SGD step moves the layer for its size. Read from the output "
                                         f"(right) back to the input (left): a line that rises to the left explodes "
                                         f"on the way back.")


def _values(logs: dict[tuple[int, str], list[dict[str, Any]]], model: str, field: str,
            epochs_: int) -> np.ndarray:
    """(seeds, epochs) of ``field`` for ``model``; NaN where not measured or not finite."""
    mine = [log for (_, m), log in sorted(logs.items()) if m == model]
    out = np.full((len(mine), epochs_), np.nan)
    for i, log in enumerate(mine):
        for r in log:
            if r[field] is not None and 1 <= r["epoch"] <= epochs_:
                out[i, r["epoch"] - 1] = r[field]
    return out


def _epochs(config: SeluDeepConfig, logs: dict[tuple[int, str], list[dict[str, Any]]], out_dir: Path) -> Figure:
    fig, (ax_acc, ax_loss) = new_figure(2, width=4.6, height=3.3)
    x = np.arange(1, config.epochs + 1)
    for model in config.models:
        for ax, field in ((ax_acc, "val_accuracy"), (ax_loss, "loss")):
            values = _values(logs, model, field, config.epochs)
            if not values.size:
                continue
            for i, row in enumerate(values):
                keep = np.isfinite(row)
                ax.plot(x[keep], row[keep], marker="o", color=COLORS[model], linewidth=1.6,
                        label=f"{LABELS[model]} (this run)" if i == 0 else None)
    seed_x = np.array(sorted(SEED_004))
    ax_acc.plot(seed_x, [SEED_004[e][3] for e in seed_x], marker="s", linestyle="--", color=SEED_COLOR,
                linewidth=1, label="SELU, seed 004's run")
    ax_loss.plot(seed_x, [SEED_004[e][0] for e in seed_x], marker="s", linestyle="--", color=SEED_COLOR,
                 linewidth=1, label="SELU, seed 004's run")
    for geron_model, geron_values in GERON_HOML3.items():
        ax_acc.plot(np.arange(1, len(geron_values) + 1), geron_values, marker="^", linestyle=":",
                    color=COLORS[geron_model], linewidth=1, alpha=0.8, label=f"{LABELS[geron_model]}, Géron HOML3")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="(a) val_accuracy after each epoch", ylim=(0, 1))
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="(b) loss during each epoch")
    ax_loss.set_ylim(bottom=0)
    ticks = np.arange(1, max(config.epochs, len(SEED_004)) + 1)
    for ax in (ax_acc, ax_loss):
        ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize="x-small")
    save(fig, out_dir, "selu_deep_epochs")
    return Figure("selu_deep_epochs", f"Géron's experiment: {config.depth} hidden layers of {config.width}, SGD at "
                                      f"lr {config.lr:g}, batches of {config.batch_size}. Solid: this run (one line "
                                      f"per seed); dashed black: seed 004's Keras log of the SELU network; dotted: "
                                      f"Géron's HOML3 notebook (SELU and ReLU + He). A network whose loss stopped "
                                      f"being finite ends where it did.")


def _diagnostic(config: SeluDeepConfig, found: dict[tuple[int, str], dict[str, Any]], out_dir: Path) -> Figure:
    fig, (ax_std, ax_mean) = new_figure(2, width=4.6, height=3.3)
    labelled = set()
    for (_, network), r in sorted(found.items()):
        layers = np.arange(1, len(r["std"]) + 1)
        std = np.array([np.nan if v is None else v for v in r["std"]], dtype=float)
        mean = np.array([np.nan if v is None else v for v in r["mean"]], dtype=float)
        label = DIAGNOSTIC_LABELS[network] if network not in labelled else None
        labelled.add(network)
        ax_std.plot(layers, std, color=DIAGNOSTIC_COLORS[network], linewidth=1.4, label=label)
        ax_mean.plot(layers, mean, color=DIAGNOSTIC_COLORS[network], linewidth=1.4)
    ax_std.axhspan(*SELU_STD, color=DIAGNOSTIC_COLORS["selu_lecun"], alpha=0.12)
    log_axis(ax_std)
    ax_std.set_ylim(STD_FLOOR, 10)
    ax_std.set(xlabel="layer", ylabel="std of the layer's output", title="(a) standard deviation (log scale)")
    ax_mean.set(xlabel="layer", ylabel="mean of the layer's output", title="(b) mean")
    for ax in (ax_std, ax_mean):
        ax.grid(alpha=0.3)
    ax_std.legend(loc="lower left", fontsize="x-small")
    save(fig, out_dir, "selu_deep_diagnostic")
    return Figure("selu_deep_diagnostic", f"At initialization, {config.diagnostic_samples:,} standardized training "
                                          f"images through {config.depth} bias-free layers of {config.width}: each "
                                          f"layer's std (a; below {STD_FLOOR:g} a line leaves the panel) and mean "
                                          f"(b). Shaded: the SELU claim's range [{SELU_STD[0]:g}, {SELU_STD[1]:g}].")
