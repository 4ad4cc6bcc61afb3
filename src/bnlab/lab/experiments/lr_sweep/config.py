"""E6's settings, its units of work and the shape of its records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = ["LRS", "MODELS", "LrSweepConfig", "Model", "alphas", "records", "units"]

Model = Literal["plain", "bn"]
Pixels = Literal["global", "raw", "pixel"]
MODELS: tuple[Model, ...] = ("plain", "bn")
LRS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # EXPERIMENTS.md §7.C
MAX_WIDTH = 4096
MAX_DEPTH = 100
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class LrSweepConfig:
    """Settings of E6. Defaults are the full run: EXPERIMENTS.md §7.C's sweep, one epoch of Fashion-MNIST per
    learning rate and network, and the loss along the gradient at initialization and after 10 steps."""

    dataset: str = "fashion-mnist"  # any of bnlab.data.DATASET_NAMES
    lrs: tuple[float, ...] = LRS  # plain SGD, one training per learning rate and network
    models: tuple[Model, ...] = MODELS  # plain: no batch norm; bn: BN before each ReLU
    depth: int = 8  # hidden layers
    width: int = 256  # units per hidden layer
    batch_size: int = 128
    epochs: int = 1
    train_size: int = 0  # train on the first N training images (0: all of them)
    pixels: Pixels = "global"  # global: (x − mean) / std, one scalar each; raw: x in [0, 1]; pixel: per pixel
    diverged_loss: float = 2.5  # a run whose final training loss exceeds this (or is not finite) diverged
    final_window: int = 50  # the final training loss: the mean over the last this many steps
    check_every: int = 10  # steps between the loop's checks for a non-finite loss (a diverged run stops there)
    landscape_lr: float = 0.003  # the learning rate of the 10 steps before the second landscape measurement
    landscape_updates: tuple[int, ...] = (0, 10)  # measure L(w − αg)/L(w) after these many updates (empty: none)
    alpha_min: float = 1e-5  # α over logspace(log10 alpha_min, log10 alpha_max, alpha_count)
    alpha_max: float = 10.0
    alpha_count: int = 25
    bn_momentum: float = 0.1  # PyTorch's convention
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if not self.lrs or len(set(self.lrs)) != len(self.lrs) or not all(lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must list positive learning rates, each once, got {self.lrs}")
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must name plain, bn or both, once each, got {self.models}")
        for name, low, high in (("depth", 1, MAX_DEPTH), ("width", 2, MAX_WIDTH), ("epochs", 1, 1000),
                                ("final_window", 1, MAX_STEPS), ("check_every", 1, MAX_STEPS),
                                ("alpha_count", 2, 1000)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two values), got {self.batch_size}")
        if self.train_size < 0:
            raise ValueError(f"train_size is a number of images (0: all), got {self.train_size}")
        if not self.diverged_loss > 0 or not self.landscape_lr > 0 or not self.bn_momentum > 0:
            raise ValueError("diverged_loss, landscape_lr and bn_momentum must be positive")
        if not 0 < self.alpha_min < self.alpha_max:
            raise ValueError(f"need 0 < alpha_min < alpha_max, got {self.alpha_min}, {self.alpha_max}")
        if any(not 0 <= u <= 10_000 for u in self.landscape_updates) or \
                len(set(self.landscape_updates)) != len(self.landscape_updates):
            raise ValueError(f"landscape_updates must list distinct step counts in 0..10,000 (empty: no landscape "
                             f"measurement), got {self.landscape_updates}")
        bnlab.kernels.check_backend_name(self.backend)


def alphas(config: LrSweepConfig) -> list[float]:
    """The step sizes α of the landscape measurement, log-spaced from alpha_min to alpha_max."""
    return [float(a) for a in np.logspace(np.log10(config.alpha_min), np.log10(config.alpha_max), config.alpha_count)]


def units(config: LrSweepConfig) -> list[Unit]:
    """One unit per learning rate and network (the sweep: resumable run by run), then one landscape measurement
    per network."""
    return [*({"lr": lr, "model": m} for lr in config.lrs for m in config.models),
            *({"landscape": m} for m in config.models if config.landscape_updates)]


def records(config: LrSweepConfig) -> RecordSchema:
    """``run``: one training at one learning rate (per-step losses, final loss, test accuracy, divergence);
    ``landscape``: L(w − αg)/L(w) over α for one network after some updates."""
    return {
        "run": {"seed": schema.integer(), "model": schema.text(MODELS), "lr": schema.number(),
                "steps": schema.integer(0), "planned_steps": schema.integer(1),
                "losses": schema.numbers(nullable=True), "final_loss": schema.number(nullable=True),
                "test_accuracy": schema.number(nullable=True), "diverged": schema.boolean(),
                "diverged_at": _step_or_null(), "seconds": schema.number()},
        "landscape": {"seed": schema.integer(), "model": schema.text(MODELS), "updates": schema.integer(0),
                      "lr": schema.number(),
                      "alphas": schema.numbers(length=config.alpha_count, nullable=False),
                      "ratios": schema.numbers(length=config.alpha_count, nullable=True)},
    }


def _step_or_null() -> schema.Spec:
    """A step number (from 1), or null: the step at which a run's loss stopped being finite, if it did."""
    step = schema.integer(1).why_not
    return schema.Spec(lambda v: None if v is None else step(v))
