"""Figure 1's settings, its constants, and the shape of the records it writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.schema import RecordSchema

__all__ = ["CLAIM_STEPS", "MAX_EVALUATIONS", "MAX_STEPS", "MODELS", "PERCENTILES", "PIXELS", "Fig1Config",
           "eval_steps", "records"]

Model = Literal["baseline", "bn"]
MODELS: tuple[Model, ...] = ("baseline", "bn")
PERCENTILES = (15, 50, 85)
PIXELS = ("unit", "centered", "standardized")
CLAIM_STEPS = (1000, 2000)  # claim (1) compares the accuracies after these steps
MAX_STEPS = 100_000_000  # days of training on a CPU; more is a typo, and would overflow the schedule
MAX_EVALUATIONS = 20_000  # each writes a record of 3 × hidden percentiles: 20,000 is about 100 MB at hidden 100
MAX_HIDDEN = 4096


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
    models: tuple[Model, ...] = MODELS  # the networks to train (the calibration trains the baseline alone)

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if self.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {self.pixels!r}")
        for name in ("steps", "batch_size", "hidden", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps must be at most {MAX_STEPS:,}, got {self.steps:,}")
        if self.hidden > MAX_HIDDEN:
            raise ValueError(f"hidden must be at most {MAX_HIDDEN:,}, got {self.hidden:,}")
        if self.steps // self.eval_every > MAX_EVALUATIONS:
            raise ValueError(f"steps / eval_every is {self.steps // self.eval_every:,} evaluations; at most "
                             f"{MAX_EVALUATIONS:,} (each writes a record): make eval_every at least "
                             f"{-(-self.steps // MAX_EVALUATIONS):,}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two values), got {self.batch_size}")
        if not self.lr > 0 or not self.init_std > 0:
            raise ValueError(f"lr and init_std must be positive, got lr={self.lr}, init_std={self.init_std}")
        if not 0 <= self.unit < self.hidden:
            raise ValueError(f"unit must be in 0..{self.hidden - 1}, got {self.unit}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must name baseline, bn or both, once each, got {','.join(self.models)}")
        bnlab.kernels.check_backend_name(self.backend)


def eval_steps(config: Fig1Config) -> list[int]:
    """0, every ``eval_every`` steps, the claim steps 1,000 and 2,000, and the last step."""
    steps = set(range(0, config.steps + 1, config.eval_every)) | {config.steps}
    return sorted(steps | {s for s in CLAIM_STEPS if s <= config.steps})


def records(config: Fig1Config) -> RecordSchema:
    """The records ``train`` writes: one per network and evaluation step, one when a network ends."""
    per_unit = schema.numbers(length=config.hidden)
    return {
        "eval": {"seed": schema.integer(), "model": schema.text(MODELS), "step": schema.integer(0, config.steps),
                 "train_loss": schema.number(nullable=True), "test_accuracy": schema.number(nullable=True),
                 **{f"p{p}": per_unit for p in PERCENTILES}},
        "end": {"seed": schema.integer(), "model": schema.text(MODELS), "steps": schema.integer(0, config.steps),
                "diverged": schema.boolean(), "seconds": schema.number()},
    }
