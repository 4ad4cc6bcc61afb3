"""E5's figures, from the run's records and its image artifacts (the first seed's images).

- ``dcgan_losses``: the discriminator's and the generator's loss curves of both GANs (seed 000's two plots);
- ``dcgan_samples``: the same 64 fixed z through the BN generator in each mode, as 8 × 8 grids;
- ``dcgan_reference``: real images and the generator without BN (whose modes are all the same network);
- ``dcgan_batch``: G(z_a) beside two companion batches, in train and in eval mode, and their difference;
- ``dcgan_scores``: each mode's IS analogue, Fréchet distance and class histogram, against real images'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.dcgan_modes.claims import by_key
from bnlab.lab.experiments.dcgan_modes.config import GENERATOR_LABELS, MODE_LABELS, MODES, DcganConfig
from bnlab.lab.experiments.dcgan_modes.train import real_name, samples_name
from bnlab.lab.plots import mean_band, new_figure, save
from bnlab.lab.registry import Figure
from bnlab.lab.result import Result
from bnlab.lab.store import Artifacts

__all__ = ["GENERATOR_COLORS", "MODE_COLORS", "mosaic", "plot"]

GENERATOR_COLORS = {"bn": "#1f77b4", "plain": "#ff7f0e"}
MODE_COLORS = {"train": "#2ca02c", "eval": "#d62728", "recalibrated": "#9467bd", "train-batch1": "#8c564b"}
REAL_COLOR = "#444444"
DIFF_MAP = "magma"


def mosaic(images: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(N, H, W) images → one (rows·(H+gap)−gap, columns·(W+gap)−gap) image, row by row; gaps mid-grey."""
    n, h, w = images.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return out


def _show(ax: Any, images: np.ndarray, title: str) -> None:
    ax.imshow(mosaic(images, columns=min(8, len(images))), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])


def plot(config: DcganConfig, records: list[dict[str, Any]], result: Result, out_dir: Path) -> list[Figure]:
    """Draw the figures whose measurements and images the run holds."""
    figures = []
    if any(r["kind"] == "losses" for r in records):
        figures.append(_losses(config, records, out_dir))
    seeds = sorted({r["seed"] for r in records if r["kind"] == "mode"})
    artifacts = Artifacts(out_dir)
    if seeds:
        seed = seeds[0]
        names = set(artifacts.names())
        if f"{samples_name(seed, 'bn')}.npz" in names:
            figures.append(_samples(records, artifacts.load_arrays(samples_name(seed, "bn")), seed, out_dir))
            figures.append(_batch(records, artifacts.load_arrays(samples_name(seed, "bn")), seed, out_dir))
        reference = {g: artifacts.load_arrays(samples_name(seed, g)) for g in ("plain",)
                     if f"{samples_name(seed, g)}.npz" in names}
        if f"{real_name(seed)}.npz" in names:
            reference["real"] = artifacts.load_arrays(real_name(seed))
        if reference:
            figures.append(_reference(reference, seed, out_dir))
        figures.append(_scores(records, out_dir))
    return figures


def _losses(config: DcganConfig, records: list[dict[str, Any]], out_dir: Path) -> Figure:
    fig, axes = new_figure(2, width=4.6, height=3.2)
    for gen in config.generators:
        rows = [r for r in records if r["kind"] == "losses" and r["generator"] == gen]
        if not rows:
            continue
        steps = np.array(sorted({r["step"] for r in rows}))
        seeds = sorted({r["seed"] for r in rows})
        for ax, key in zip(axes, ("train_loss_d", "train_loss_g"), strict=True):
            values = np.full((len(seeds), len(steps)), np.nan)
            for r in rows:
                v = r[key]
                values[seeds.index(r["seed"]), np.searchsorted(steps, r["step"])] = np.nan if v is None else v
            mean_band(ax, steps, values, color=GENERATOR_COLORS[gen], linewidth=1.4, label=GENERATOR_LABELS[gen])
    for ax, title in zip(axes, ("discriminator loss", "generator loss"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    save(fig, out_dir, "dcgan_losses")
    return Figure("dcgan_losses", f"Seed 000's plots: the discriminator's and the generator's binary cross-entropy, "
                                  f"each point the mean over {config.loss_every} steps (mean over seeds, band ± one "
                                  f"standard deviation).")


def _score_title(records: list[dict[str, Any]], seed: int, generator: str, mode: str) -> str:
    r = by_key(records, "mode", "seed", "generator", "mode").get((seed, generator, mode))
    if r is None:
        return MODE_LABELS[mode]
    fd = "" if r["frechet"] is None else f", FD {r['frechet']:.3g}"
    return f"{MODE_LABELS[mode]}\nconfidence {r['confidence']:.2f}, IS {r['inception_score']:.2f}{fd}"


def _samples(records: list[dict[str, Any]], arrays: dict[str, np.ndarray], seed: int, out_dir: Path) -> Figure:
    modes = [m for m in MODES if m in arrays]
    fig, axes = new_figure(len(modes), width=3.3, height=3.7)
    for ax, mode in zip(axes, modes, strict=True):
        _show(ax, arrays[mode], _score_title(records, seed, "bn", mode))
    save(fig, out_dir, "dcgan_samples")
    return Figure("dcgan_samples", f"The generator with BN, seed {seed}: the same fixed z in each mode. Train mode "
                                   f"normalizes each batch of z by its own statistics; eval mode uses the running "
                                   f"averages of training; recalibrated: eval mode after bnlab.recalibrate; batch "
                                   f"of 1: train mode, one z at a time. Scores: the reference classifier's, over "
                                   f"the scored samples of each mode.")


def _reference(arrays: dict[str, dict[str, np.ndarray]], seed: int, out_dir: Path) -> Figure:
    panels = [(k, a) for k, a in (("real", arrays.get("real")), ("plain", arrays.get("plain"))) if a is not None]
    fig, axes = new_figure(len(panels), width=3.3, height=3.5)
    for ax, (key, a) in zip(axes, panels, strict=True):
        if key == "real":
            _show(ax, a["images"], "real training images")
        else:
            _show(ax, a["train"], f"{GENERATOR_LABELS['plain']}\n(every mode is the same network)")
    save(fig, out_dir, "dcgan_reference")
    return Figure("dcgan_reference", f"For comparison (seed {seed}): real images, and the generator without BN on "
                                     f"the same fixed z (seed 000's \"initialization only\" model).")


def _batch(records: list[dict[str, Any]], arrays: dict[str, np.ndarray], seed: int, out_dir: Path) -> Figure:
    tests = by_key(records, "batch", "seed", "generator", "mode")
    modes = [m for m in ("train", "eval") if f"batch-{m}" in arrays]
    fig, axes = new_figure(3, width=2.4, height=2.5, nrows=len(modes))
    for row, mode in enumerate(modes):
        pair = arrays[f"batch-{mode}"].astype(float)
        diff = np.abs(pair[0] - pair[1])
        r = tests.get((seed, "bn", mode))
        what = "bit-identical" if r and r["identical"] else f"max |Δ| {r['max_abs_diff']:.3g}" if r else ""
        for col, (image, title) in enumerate(((pair[0], f"{mode} mode, batch 1"), (pair[1], f"{mode} mode, batch 2"))):
            axes[row, col].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_title(title, fontsize="small")
        axes[row, 2].imshow(diff, cmap=DIFF_MAP, vmin=0, vmax=max(float(diff.max()), 1.0))
        axes[row, 2].set_title(f"|difference| ({what})", fontsize="small")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    save(fig, out_dir, "dcgan_batch")
    return Figure("dcgan_batch", f"Batch dependence (generator with BN, seed {seed}): the same z_a computed in a batch "
                                 f"with the other fixed z, and in a batch with fresh companions. The difference map "
                                 f"is scaled to its own maximum (in pixel levels 0–255; black: none).")


def _scores(records: list[dict[str, Any]], out_dir: Path) -> Figure:
    modes_found = by_key(records, "mode", "seed", "generator", "mode")
    generators = [g for g in ("bn", "plain") if any(k[1] == g for k in modes_found)]
    real = [r for r in records if r["kind"] == "real"]
    fig, axes = new_figure(3, width=3.9, height=3.2)
    width = 0.8 / len(MODES)
    x = np.arange(len(generators))
    for i, mode in enumerate(MODES):
        for ax, key in zip(axes[:2], ("inception_score", "frechet"), strict=True):
            values = [np.mean([r[key] if r[key] is not None else np.nan for k, r in modes_found.items()
                               if k[1:] == (g, mode)]) for g in generators]
            ax.bar(x + (i - (len(MODES) - 1) / 2) * width, values, width, color=MODE_COLORS[mode], label=mode)
    for ax, key, title in zip(axes[:2], ("inception_score", "frechet"), ("IS analogue (higher: better)",
                                                                      "Fréchet distance (lower: better)"), strict=True):
        if real:
            values = [r[key] for r in real if r[key] is not None]
            if values:
                ax.axhline(float(np.mean(values)), color=REAL_COLOR, linestyle="--", linewidth=1, label="real images")
        ax.set_xticks(x, [GENERATOR_LABELS[g] for g in generators], fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize="x-small")
    ax = axes[2]
    for i, mode in enumerate(MODES):
        rows = [r["histogram"] for k, r in modes_found.items() if k[1:] == ("bn", mode)]
        if rows:
            counts = np.sum(rows, axis=0).astype(float)
            ax.bar(np.arange(len(counts)) + (i - (len(MODES) - 1) / 2) * width, counts / counts.sum(), width,
                   color=MODE_COLORS[mode], label=mode)
    if real:
        counts = np.sum([r["histogram"] for r in real], axis=0).astype(float)
        ax.step(np.arange(len(counts)), counts / counts.sum(), where="mid", color=REAL_COLOR, linewidth=1,
                label="real images")
    ax.set_title("classes of the BN generator's samples", fontsize="medium")
    ax.set_xlabel("class (the classifier's argmax)")
    ax.set_ylabel("share of samples")
    ax.grid(alpha=0.3, axis="y")
    save(fig, out_dir, "dcgan_scores")
    return Figure("dcgan_scores", "The reference classifier's scores of each mode's samples (mean over seeds); dashed: "
                                  "real images. The no-BN generator's four modes are the same network.")
