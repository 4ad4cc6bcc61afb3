"""E4's units of work: the inputs, and each unit's measurements (records) and histograms (artifacts)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.variance.config import VarianceConfig
from bnlab.lab.experiments.variance.nets import (
    CLASSES,
    jacobian_singular_values,
    measure,
    network_weights,
    selu_deep,
)
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import check_finite

__all__ = ["hist_name", "inputs", "prepare", "train"]


def hist_name(seed: int, input_: str, activation: str) -> str:
    """The artifact holding the histograms of one unit (every initialization, with and without BN)."""
    return f"hist-seed{seed}-{input_}-{activation}"


def _images(config: VarianceConfig, data_dir: str | None, cache: dict[str, Any]) -> Tensor:
    """The first ``samples`` training images of ``dataset``, flattened and standardized with one mean and one
    standard deviation over the whole training set (per-pixel standardization blows up Fashion-MNIST's almost
    constant border pixels)."""
    key = f"variance-images-{config.dataset}-{config.samples}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        x = data.x_train.flatten(1)
        if len(x) < config.samples:
            raise RunSetupError(f"samples={config.samples:,} is more than the {len(x):,} training images of "
                                f"{config.dataset}")
        check_finite(x, f"the {config.dataset} training images")  # before standardizing, which would spread a NaN
        cache[key] = ((x[: config.samples] - x.mean()) / x.std()).contiguous()
    return cache[key]  # type: ignore[no-any-return]


def inputs(config: VarianceConfig, name: str, ctx: RunContext) -> Tensor:
    """The input batch ``name``: N(0, 1) rows of ``width`` values (the same for every unit of a seed), or the
    standardized images."""
    if name == "gaussian":
        generator = torch.Generator().manual_seed(ctx.seed)
        return torch.randn(config.samples, config.width, generator=generator).to(ctx.device)
    return _images(config, ctx.data_dir, ctx.cache).to(ctx.device)


def prepare(config: VarianceConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, that the images load (when asked for) and that the batch-norm
    backend runs on ``device``; RunSetupError or FileNotFoundError otherwise."""
    uses_images = "images" in config.inputs
    if data_dir is not None and not (uses_images and config.dataset in DATA_DIR_NAMES):
        raise RunSetupError(f"--data-dir is read only for the images input of {', '.join(DATA_DIR_NAMES)}; this "
                            f"run does not read one")
    if True in config.batch_norm:
        try:
            bnlab.kernels.resolve(config.backend, device, torch.float32)
        except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
            raise RunSetupError(str(err)) from None
    if uses_images:
        try:
            _images(config, data_dir, cache)
        except ValueError as err:  # a corrupt file, too few images, non-finite values
            raise RunSetupError(str(err)) from None


def _generator(seed: int, *parts: str) -> torch.Generator:
    """A generator for one network's weights, the same for the networks with and without BN (paired)."""
    # Python's hash of text is salted per process; crc32 gives the same seed in every process.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32("/".join(parts).encode())) % 2**63)


def train(config: VarianceConfig, ctx: RunContext) -> None:
    """Measure one unit: an input × activation (every initialization, without and with BN), the deep SELU check
    on an input, or Glorot's Jacobian check."""
    unit = ctx.unit
    if "jacobian" in unit:
        x = torch.randn(config.jacobian_samples, config.jacobian_width,
                        generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
        for init in ("glorot_uniform", "standard"):
            values = jacobian_singular_values(x, init, config.jacobian_depth, _generator(ctx.seed, "jacobian", init))
            ctx.log({"kind": "jacobian", "seed": ctx.seed, "init": init, "singular": values})
        return
    if "selu_deep" in unit:
        x = inputs(config, unit["selu_deep"], ctx)
        mean, std = selu_deep(x, config.selu_depth, config.width, _generator(ctx.seed, "selu", unit["selu_deep"]))
        ctx.log({"kind": "selu", "seed": ctx.seed, "input": unit["selu_deep"], "mean": mean, "std": std})
        return
    input_, activation = unit["input"], unit["activation"]
    x = inputs(config, input_, ctx)
    labels = torch.randint(0, CLASSES, (config.samples,), generator=torch.Generator().manual_seed(ctx.seed))
    arrays: dict[str, np.ndarray] = {}
    for init in config.inits:
        weights = network_weights(init, x.shape[1], config.width, config.depth,
                                  _generator(ctx.seed, input_, activation, init), ctx.device)
        for bn in config.batch_norm:
            stats = measure(x, labels.to(ctx.device), weights, activation, bn, bins=config.bins, leak=config.leak,
                            backend=config.backend)
            ctx.log({"kind": "layers", "seed": ctx.seed, "input": input_, "activation": activation, "init": init,
                     "batch_norm": bn, "z_std": stats.z_std, "pre_mean": stats.pre_mean, "pre_std": stats.pre_std,
                     "h_mean": stats.h_mean, "h_std": stats.h_std, "saturated": stats.saturated,
                     "g_mean": stats.g_mean, "g_std": stats.g_std})
            key = f"{init}-{'bn' if bn else 'plain'}"
            for name in ("h_hist", "h_edges", "g_hist", "g_edges"):
                arrays[f"{key}-{name}"] = getattr(stats, name).numpy()
    if ctx.artifacts is not None:
        ctx.artifacts.save_arrays(hist_name(ctx.seed, input_, activation), **arrays)
