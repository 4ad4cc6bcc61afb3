"""E4's figures, from the run's records and its histogram artifacts.

- ``variance_std``: the activations' std by layer, one panel per input and activation, a line per initialization
  (solid without BN, dashed with BN before the activation);
- ``variance_hist_h`` and ``variance_hist_g``: histograms of the activations and of the back-propagated gradients
  ∂L/∂z, layer by layer (columns), for the networks CS231n's and Glorot's figures show (rows);
- ``variance_bn``: the pre-activation std by layer, without and with BN, every network;
- ``variance_selu``: the deep SELU network's mean and std over its layers;
- ``variance_jacobian``: Glorot's mean Jacobian singular values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.variance.claims import BN_STD, JACOBIAN, SELU_MEAN, SELU_STD, layer_records
from bnlab.lab.experiments.variance.config import INIT_LABELS, VarianceConfig
from bnlab.lab.experiments.variance.train import hist_name
from bnlab.lab.plots import log_axis, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result
from bnlab.lab.store import Artifacts

__all__ = ["INIT_COLORS", "plot"]

INIT_COLORS = {"normal-0.01": "#9467bd", "normal-1": "#d62728", "standard": "#8c564b", "glorot_normal": "#2ca02c",
               "glorot_uniform": "#17becf", "he_normal": "#ff7f0e", "lecun_normal": "#1f77b4"}
HIST_COLOR = "#4c72b0"
GRAD_COLOR = "#c44e52"
# The rows of the histogram grids: (activation, initialization, batch norm), as CS231n's and Glorot's figures.
HIST_ROWS = (("tanh", "normal-0.01", False), ("tanh", "normal-1", False), ("tanh", "glorot_uniform", False),
             ("relu", "lecun_normal", False), ("relu", "he_normal", False), ("selu", "lecun_normal", False),
             ("tanh", "normal-0.01", True), ("relu", "normal-1", True))


def plot(config: VarianceConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    """Draw the figures whose measurements the run holds (a seed's histograms: the first seed measured)."""
    nets = layer_records(records)
    figures = []
    if nets:
        figures.append(_std(config, nets, out_dir))
        figures.extend(_histograms(config, nets, out_dir))
        if True in config.batch_norm:
            figures.append(_bn(config, nets, out_dir))
    selu = [r for r in records if r["kind"] == "selu"]
    if selu:
        figures.append(_selu(config, selu, out_dir))
    jac = [r for r in records if r["kind"] == "jacobian"]
    if jac:
        figures.append(_jacobian(config, jac, out_dir))
    return figures


def _input_label(config: VarianceConfig, input_: str) -> str:
    return "N(0, 1) inputs" if input_ == "gaussian" else f"{config.dataset} images"


def _values(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _mean_over_seeds(nets: dict[Any, dict[str, Any]], key: tuple[str, str, str, bool], field: str) -> np.ndarray:
    rows = [_values(r[field]) for k, r in nets.items() if k[1:] == key]
    return np.mean(rows, axis=0) if rows else np.array([])


def _std(config: VarianceConfig, nets: dict[Any, dict[str, Any]], out_dir: Path) -> Figure:
    inputs = [i for i in config.inputs if any(k[1] == i for k in nets)]
    fig, axes = new_figure(len(config.activations), width=2.6, height=2.4, nrows=len(inputs), sharey=True)
    layers = np.arange(1, config.depth + 1)
    for row, input_ in enumerate(inputs):
        for col, act in enumerate(config.activations):
            ax = axes[row, col]
            for init in config.inits:
                for bn in config.batch_norm:
                    std = _mean_over_seeds(nets, (input_, act, init, bn), "h_std")
                    if std.size:
                        ax.plot(layers, std, color=INIT_COLORS[init], linestyle="--" if bn else "-", linewidth=1.4,
                                label=INIT_LABELS[init] if (row, col, bn) == (0, 0, False) else None)
            log_axis(ax)
            ax.set_title(f"{act}, {_input_label(config, input_)}", fontsize="small")
            ax.grid(alpha=0.3)
            if row == len(inputs) - 1:
                ax.set_xlabel("layer")
        axes[row, 0].set_ylabel("std of activations")
    fig.legend(loc="outside lower center", ncols=len(config.inits), fontsize="small")
    save(fig, out_dir, "variance_std")
    return Figure("variance_std", f"Standard deviation of each layer's activations h at initialization ({config.depth} "
                                  f"layers of {config.width}, no biases), one line per initialization: solid without "
                                  f"batch norm, dashed with batch norm before the activation (batch statistics). Log "
                                  f"scale: a falling line vanishes, a rising one explodes. Mean over seeds.")


def _histograms(config: VarianceConfig, nets: dict[Any, dict[str, Any]], out_dir: Path) -> list[Figure]:
    seed = min(k[0] for k in nets)
    input_ = next(i for i in config.inputs if any(k[:2] == (seed, i) for k in nets))
    artifacts = Artifacts(out_dir)
    rows = [r for r in HIST_ROWS if (seed, input_, *r) in nets]
    loaded: dict[str, dict[str, np.ndarray]] = {}
    for act in {r[0] for r in rows}:
        try:
            loaded[act] = artifacts.load_arrays(hist_name(seed, input_, act))
        except (FileNotFoundError, ValueError):
            continue  # a unit interrupted after its records but before its histograms
    rows = [r for r in rows if r[0] in loaded]
    if not rows:
        return []
    figures = []
    for what, color, title in (("h", HIST_COLOR, "activations h"), ("g", GRAD_COLOR, "gradients ∂L/∂z")):
        # Small multiples drawn in one axes (a cell per row and layer): 80 separate axes cost seconds to lay out.
        fig, (ax,) = new_figure(1, width=1.6 + 0.95 * config.depth, height=0.5 + 0.75 * len(rows), layout=None)
        fig.subplots_adjust(left=1.9 / fig.get_figwidth(), right=0.99, top=1 - 0.35 / fig.get_figheight(),
                            bottom=0.05)
        for i, (act, init, bn) in enumerate(rows):
            key = f"{init}-{'bn' if bn else 'plain'}"
            counts, edges = loaded[act][f"{key}-{what}_hist"], loaded[act][f"{key}-{what}_edges"]
            x = (edges - edges[0]) / (edges[-1] - edges[0]) * 0.9  # each cell 0.9 wide, 0.1 gap
            y0 = len(rows) - 1 - i
            for layer in range(config.depth):
                # ReLU's exact zeros (about half the units) fill the first bin; scaled to the rest, clipped.
                zeros_bin = what == "h" and act == "relu"
                peak = (counts[layer][1:] if zeros_bin else counts[layer]).max()
                heights = np.minimum(counts[layer] / peak, 1.0) * 0.85 if peak > 0 else counts[layer]
                ax.stairs(y0 + heights, layer + x, baseline=y0, fill=True, color=color, linewidth=0)
            ax.text(-0.1, y0 + 0.4, f"{act}, {INIT_LABELS[init]}{' + BN' if bn else ''}\n"
                                    f"range [{edges[0]:.2g}, {edges[-1]:.2g}]", ha="right", va="center", fontsize=7)
        for layer in range(config.depth):
            ax.text(layer + 0.45, len(rows) + 0.05, f"layer {layer + 1}", ha="center", va="bottom", fontsize=7)
        ax.set_xlim(-0.05, config.depth)
        ax.set_ylim(-0.05, len(rows) + 0.3)
        ax.set_axis_off()
        stem = f"variance_hist_{what}"
        save(fig, out_dir, stem)
        figures.append(Figure(stem, f"Histograms of the {title} at initialization, layer by layer (columns), on "
                                    f"{_input_label(config, input_)} (seed {seed}): each row one network, as in "
                                    f"CS231n's figure, each histogram scaled to its own peak. Each row shares one "
                                    f"range over its layers, printed beside it (values beyond it count in the "
                                    f"outermost bins); a layer whose values collapse shows one spike in the middle, "
                                    f"a saturated tanh piles up at ±1."
                                    + (" ReLU's first bin (its exact zeros, about half the units) is clipped."
                                       if what == "h" else "")))
    return figures


def _bn(config: VarianceConfig, nets: dict[Any, dict[str, Any]], out_dir: Path) -> Figure:
    inputs = [i for i in config.inputs if any(k[1] == i for k in nets)]
    fig, axes = new_figure(2, width=4.6, height=2.8, nrows=len(inputs))
    layers = np.arange(1, config.depth + 1)
    for row, input_ in enumerate(inputs):
        for col, bn in enumerate((False, True)):
            ax = axes[row, col]
            labelled = set()
            for (_, inp, _act, init, b), r in nets.items():
                if inp == input_ and b == bn:
                    label = INIT_LABELS[init] if init not in labelled and not bn else None
                    labelled.add(init)
                    ax.plot(layers, _values(r["pre_std"]), color=INIT_COLORS[init], linewidth=0.8, alpha=0.7,
                            label=label)
            if bn:
                ax.axhspan(*BN_STD, color="#2e7d32", alpha=0.12, label=f"claimed range {BN_STD}")
                ax.set_ylim(0.8, 1.2)
                ax.legend(loc="upper right", fontsize="x-small")
            else:
                log_axis(ax)
                ax.legend(loc="upper left", fontsize=6)
            ax.set_title(f"{'with' if bn else 'without'} BN, {_input_label(config, input_)}", fontsize="small")
            ax.set(xlabel="layer", ylabel="pre-activation std")
            ax.grid(alpha=0.3)
    save(fig, out_dir, "variance_bn")
    return Figure("variance_bn", "The standard deviation of each layer's pre-activation (the input of the "
                                 "activation) for every network, coloured by initialization: left without batch norm "
                                 "(log scale, from vanishing to exploding), right with batch norm before the "
                                 "activation, where every network sits at 1 (the shaded band is the claim's range).")


def _selu(config: VarianceConfig, selu: list[dict[str, Any]], out_dir: Path) -> Figure:
    fig, (ax_std, ax_mean) = new_figure(2, width=4.6, height=2.8)
    for r in selu:
        layers = np.arange(1, len(r["std"]) + 1)
        label = f"{_input_label(config, r['input'])}, seed {r['seed']}"
        ax_std.plot(layers, _values(r["std"]), linewidth=1, label=label)
        ax_mean.plot(layers, _values(r["mean"]), linewidth=1, label=label)
    ax_std.axhspan(*SELU_STD, color="#2e7d32", alpha=0.12)
    ax_mean.axhspan(-SELU_MEAN, SELU_MEAN, color="#2e7d32", alpha=0.12)
    ax_std.set(title="std of activations", xlabel="layer", ylim=(0.5, 1.5))
    ax_mean.set(title="mean of activations", xlabel="layer", ylim=(-0.4, 0.4))
    for ax in (ax_std, ax_mean):
        ax.grid(alpha=0.3)
    ax_std.legend(loc="lower left", fontsize="x-small")
    save(fig, out_dir, "variance_selu")
    return Figure("variance_selu", f"SELU with LeCun normal weights over {config.selu_depth} layers of {config.width}: "
                                   f"each layer's std (left) and mean (right); the shaded bands are the claim's "
                                   f"ranges (std {SELU_STD}, |mean| ≤ {SELU_MEAN}).")


def _jacobian(config: VarianceConfig, jac: list[dict[str, Any]], out_dir: Path) -> Figure:
    fig, (ax,) = new_figure(1, width=5.0, height=3.0)
    for r in jac:
        values = _values(r["singular"])
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", color=INIT_COLORS[r["init"]],
                label=f"{INIT_LABELS[r['init']]}, seed {r['seed']}")
    for init, (low, high) in JACOBIAN.items():
        ax.axhspan(low, high, color=INIT_COLORS[init], alpha=0.1)
    ax.set(xlabel="Jacobian of layer i+1 over layer i (i)", ylabel="mean singular value", ylim=(0, 1.2))
    ax.set_xticks(np.arange(1, config.jacobian_depth))
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    save(fig, out_dir, "variance_jacobian")
    return Figure("variance_jacobian", f"Glorot & Bengio's check on a tanh net of {config.jacobian_depth} layers of "
                                       f"{config.jacobian_width}: the mean singular value of each Jacobian between "
                                       f"consecutive layers, averaged over {config.jacobian_samples} N(0, 1) inputs. "
                                       f"Shaded: the claimed ranges (0.8 ± 0.1 normalized, 0.5 ± 0.1 standard).")
