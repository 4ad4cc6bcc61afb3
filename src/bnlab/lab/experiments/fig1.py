"""Figure 1 of Ioffe & Szegedy (2015): a sigmoid MLP on MNIST-like digits, with and without batch norm.

The network is the paper's: 784 → 100 → 100 → 100 → 10, sigmoid hidden units, weights from a small Gaussian,
softmax cross-entropy, mini-batches of 60, plain SGD at a fixed learning rate. The BN variant puts a bnlab
``BatchNorm1d`` before each sigmoid and drops the bias it makes redundant; both start from the same weights and
see the same mini-batches. At each evaluation step the run records the test accuracy (BN in eval mode, with its
running statistics) and the {15, 50, 85}th percentiles over the test set of the input of every sigmoid of the
last hidden layer. The claims are judged in :mod:`bnlab.lab.experiments.fig1_claims`, the figures drawn in
:mod:`bnlab.lab.experiments.fig1_plots`; docs/experiments.md explains the choices and the calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, DATASET_NAMES, load_dataset
from bnlab.lab import engine
from bnlab.lab.registry import Experiment, Figure, RunContext, RunSetupError, register

__all__ = ["MODELS", "PERCENTILES", "Fig1Config", "build_pair", "eval_steps", "prepare", "prepare_pixels"]

MODELS = ("baseline", "bn")
PERCENTILES = (15, 50, 85)
PIXELS = ("unit", "centered", "standardized")
CLAIM_STEPS = (1000, 2000)  # claim (1) compares the accuracies after these steps


@dataclass(frozen=True)
class Fig1Config:
    """Settings of the Figure 1 run. Defaults are the full run; docs/experiments.md records how lr, init_std and
    pixels were calibrated (3 seeds, chosen for the baseline's accuracy, never for a claim)."""

    dataset: str = "mnist-5k"  # any of bnlab.data.DATASET_NAMES
    steps: int = 50_000  # SGD steps per network
    batch_size: int = 60
    hidden: int = 100  # units per hidden layer (3 hidden layers)
    lr: float = 1.0  # plain SGD, fixed (calibrated)
    init_std: float = 0.1  # weights ~ N(0, init_std²); biases 0 (calibrated)
    pixels: str = "standardized"  # unit: [0, 1]; centered: [-1, 1]; standardized: (x − mean) / std (calibrated)
    eval_every: int = 500  # evaluation interval in steps (1,000 and 2,000 are always evaluated)
    unit: int = 0  # the unit of the last hidden layer shown in panels (b) and (c)
    bn_momentum: float = 0.1  # running-statistics momentum of the BN layers (PyTorch convention)
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if self.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {self.pixels!r}")
        for name in ("steps", "batch_size", "hidden", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two values), got {self.batch_size}")
        if not self.lr > 0 or not self.init_std > 0:
            raise ValueError(f"lr and init_std must be positive, got lr={self.lr}, init_std={self.init_std}")
        if not (math.isfinite(self.lr) and math.isfinite(self.init_std)):
            raise ValueError(f"lr and init_std must be finite, got lr={self.lr}, init_std={self.init_std}")
        if not 0 <= self.unit < self.hidden:
            raise ValueError(f"unit must be in 0..{self.hidden - 1}, got {self.unit}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        bnlab.kernels.check_backend_name(self.backend)


def eval_steps(config: Fig1Config) -> list[int]:
    """0, every ``eval_every`` steps, the claim steps 1,000 and 2,000, and the last step."""
    steps = set(range(0, config.steps + 1, config.eval_every)) | {config.steps}
    return sorted(steps | {s for s in CLAIM_STEPS if s <= config.steps})


def prepare_pixels(x_train: Tensor, x_test: Tensor, pixels: str) -> tuple[Tensor, Tensor]:
    """Flatten (N, 1, H, W) images in [0, 1] to (N, H·W) and scale them as ``pixels`` says."""
    a, b = x_train.flatten(1), x_test.flatten(1)
    if pixels == "centered":
        return a * 2 - 1, b * 2 - 1
    if pixels == "standardized":
        mean, std = a.mean(), a.std()  # one scalar each, from the training set only
        return (a - mean) / std, (b - mean) / std
    return a, b


def _mlp(inputs: int, hidden: int, classes: int, batch_norm: bool, config: Fig1Config) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = inputs
    for _ in range(3):
        layers.append(torch.nn.Linear(width, hidden, bias=not batch_norm))  # BN's β replaces the bias
        if batch_norm:
            layers.append(bnlab.BatchNorm1d(hidden, momentum=config.bn_momentum, backend=config.backend))
        layers.append(torch.nn.Sigmoid())
        width = hidden
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def build_pair(inputs: int, classes: int, config: Fig1Config) -> dict[str, torch.nn.Sequential]:
    """The baseline and the BN network with the same initial weights: N(0, init_std²), biases 0.

    Draws from torch's global generator (seed it first).
    """
    baseline = _mlp(inputs, config.hidden, classes, False, config)
    bn = _mlp(inputs, config.hidden, classes, True, config)
    with torch.no_grad():
        for layer in baseline:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, config.init_std)
                layer.bias.zero_()
        linears_bn = [m for m in bn if isinstance(m, torch.nn.Linear)]
        linears_base = [m for m in baseline if isinstance(m, torch.nn.Linear)]
        for dst, src in zip(linears_bn, linears_base, strict=True):
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                dst.bias.copy_(src.bias)
    return {"baseline": baseline, "bn": bn}


def _round(values: Tensor) -> list[float]:
    return [round(v, 5) for v in values.tolist()]


def _data(config: Fig1Config, device: torch.device, data_dir: str | None,
          cache: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_test, y_test, classes) on ``device``, pixels prepared; kept in ``cache`` for the seeds."""
    key = f"fig1-data-{config.dataset}-{config.pixels}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        x_train, x_test = prepare_pixels(data.x_train, data.x_test, config.pixels)
        cache[key] = (x_train.to(device), data.y_train.to(device), x_test.to(device), data.y_test.to(device),
                      data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def prepare(config: Fig1Config, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before a run folder is made, that the run can start, and load its data into ``cache``.

    Raises:
        RunSetupError: ``data_dir`` given for a data set that does not read one, a batch-norm backend that
            cannot run on ``device``, or a data file that is corrupt.
        FileNotFoundError: the data set is not installed (the message names the command that installs it).
    """
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}, which ships inside a Python package; drop --data-dir, or add "
                            f"--set dataset=fashion-mnist")
    try:  # the layers run in float32 on the device; an explicit backend (or $BNLAB_BACKEND) must run there
        bnlab.kernels.resolve(config.backend, device, torch.float32)
    except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
        raise RunSetupError(str(err)) from None
    try:
        _data(config, device, data_dir, cache)
    except ValueError as err:  # a corrupt or inconsistent file (a missing one is a FileNotFoundError)
        raise RunSetupError(str(err)) from None


def train(config: Fig1Config, ctx: RunContext, models: tuple[str, ...] = MODELS) -> None:
    """Train both networks (or those named in ``models``) for one seed from the same initial weights, logging one
    record per network and evaluation step, then an end record."""
    data = _data(config, ctx.device, ctx.data_dir, ctx.cache)
    pair = build_pair(data[0].shape[1], data[4], config)
    for name in models:
        train_one(config, ctx, name, pair[name], data)


def train_one(config: Fig1Config, ctx: RunContext, name: str, model: torch.nn.Module,
              data: tuple[Tensor, Tensor, Tensor, Tensor, int]) -> None:
    x_train, y_train, x_test, y_test, _ = data
    model.to(ctx.device)
    last_sigmoid = [m for m in model.modules() if isinstance(m, torch.nn.Sigmoid)][-1]
    q = torch.tensor([p / 100 for p in PERCENTILES], device=ctx.device)

    def evaluate(model: torch.nn.Module) -> dict[str, Any]:
        captured: dict[str, Tensor] = {}
        # Hooked only while evaluating: a hook left on would cost a Python call on every training step.
        handle = last_sigmoid.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0]))
        try:
            logits = model(x_test)
        finally:
            handle.remove()
        accuracy = (logits.argmax(1) == y_test).float().mean()
        quantiles = torch.quantile(captured["x"].float(), q, dim=0)  # (3, hidden): per unit, over the test set
        out: dict[str, Any] = {"test_accuracy": round(accuracy.item(), 6)}
        for p, row in zip(PERCENTILES, quantiles, strict=True):
            out[f"p{p}"] = _round(row)
        return out

    def log(record: dict[str, Any]) -> None:
        ctx.log({"kind": "eval", "seed": ctx.seed, "model": name, **record})

    optimizer = engine.make_optimizer(model.parameters(), "sgd", config.lr)
    result = engine.train(model, x_train, y_train, optimizer, steps=config.steps, batch_size=config.batch_size,
                          seed=ctx.seed, eval_steps=eval_steps(config), evaluate=evaluate, on_eval=log,
                          progress=ctx.progress, desc=f"fig1 seed {ctx.seed} {name}")
    ctx.log({"kind": "end", "seed": ctx.seed, "model": name, "steps": result.steps, "diverged": result.diverged,
             "seconds": round(result.seconds, 2)})


# The claims and the figures import this module; importing them only when called lets either be imported first.
def _summarize(config: Fig1Config, records: list[dict[str, Any]]) -> dict[str, Any]:
    from bnlab.lab.experiments.fig1_claims import summarize

    return summarize(config, records)


def _plot(config: Fig1Config, records: list[dict[str, Any]], result: Mapping[str, Any], out_dir: Path) -> list[Figure]:
    from bnlab.lab.experiments.fig1_plots import plot

    return plot(config, records, result, out_dir)


def _register() -> None:
    register(Experiment(
        name="fig1",
        summary="Figure 1: sigmoid MLP with and without BN (test accuracy, drift of the sigmoid inputs)",
        config_cls=Fig1Config,
        train=train,
        summarize=_summarize,
        plot=_plot,
        quick={"steps": 10_000, "eval_every": 250},
        smoke={"dataset": "synthetic", "steps": 60, "eval_every": 20, "hidden": 16},
        prepare=prepare,
    ))


_register()
