"""E3's settings, its units of work and the shape of its records.

Networks (``models``), each 100 hidden Dense(100) layers and a Dense(10) softmax output, as Géron builds them:

- ``selu``: SELU with LeCun normal weights (the self-normalizing network of seed 004);
- ``relu``: ReLU with He normal weights;
- ``relu_bn``: ReLU with He normal weights and batch norm between each linear layer (without bias) and its ReLU;
- ``selu_dropout``: ``selu`` with AlphaDropout(``alpha_dropout``) before the output layer (the SNN paper's
  regularizer; optional).

The forward diagnostic's networks (``diagnostic``), measured at initialization: SELU + LeCun normal, ReLU + He
normal, ReLU + LeCun normal, tanh + N(0, 0.01²) (EXPERIMENTS.md §4.C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import bnlab
from bnlab.data import DATASET_NAMES, GERON_VALIDATION
from bnlab.lab import schema
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = ["DIAGNOSTICS", "MODELS", "Diagnostic", "Model", "SeluDeepConfig", "records", "units"]

Model = Literal["selu", "relu", "relu_bn", "selu_dropout"]
Diagnostic = Literal["selu_lecun", "relu_he", "relu_lecun", "tanh_small"]
MODELS: tuple[Model, ...] = ("selu", "relu", "relu_bn", "selu_dropout")
DIAGNOSTICS: tuple[Diagnostic, ...] = ("selu_lecun", "relu_he", "relu_lecun", "tanh_small")
SUMMARY_COLUMNS = 5  # a summary row: layer (type), output shape, Param #, trainable, non-trainable
MAX_DEPTH = 1000
MAX_WIDTH = 4096


@dataclass(frozen=True)
class SeluDeepConfig:
    """Settings of E3. Defaults are the full run: Géron's experiment (HOML3, chapter 11) on Fashion-MNIST's
    55,000 / 5,000 / 10,000 split, 5 epochs of SGD at lr 1e-3 in batches of 32."""

    dataset: str = "fashion-mnist"  # any of bnlab.data.DATASET_NAMES
    models: tuple[Model, ...] = ("selu", "relu", "relu_bn")
    depth: int = 100  # hidden layers
    width: int = 100  # units per hidden layer
    lr: float = 1e-3  # plain SGD (Keras's SGD(learning_rate=1e-3), no momentum)
    batch_size: int = 32  # Keras's default
    epochs: int = 5
    validation: int = GERON_VALIDATION  # the last 5,000 training images (HOML3's split)
    train_size: int = 0  # train on the first N of the remaining training images (0: all 55,000)
    alpha_dropout: float = 0.05  # the selu_dropout network's rate (the SNN paper: 0.05 or 0.10)
    bn_momentum: float = 0.01  # Keras's BatchNormalization(momentum=0.99), in PyTorch's convention
    bn_eps: float = 1e-3  # Keras's epsilon
    diagnostic: tuple[Diagnostic, ...] = DIAGNOSTICS  # the forward diagnostic at initialization (empty: none)
    diagnostic_samples: int = 1000  # standardized training images it forwards
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if len(set(self.models)) != len(self.models) or len(set(self.diagnostic)) != len(self.diagnostic):
            raise ValueError(f"models and diagnostic must name each network once, got {self.models}, "
                             f"{self.diagnostic}")
        if not self.models and not self.diagnostic:
            raise ValueError("nothing to do: models and diagnostic are both empty")
        for name, low, high in (("depth", 1, MAX_DEPTH), ("width", 2, MAX_WIDTH), ("epochs", 1, 1000),
                                ("diagnostic_samples", 2, 100_000)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two values), got {self.batch_size}")
        if self.validation < 1 or self.train_size < 0:
            raise ValueError(f"validation must be at least 1 and train_size at least 0, got {self.validation}, "
                             f"{self.train_size}")
        if not self.lr > 0 or not 0 < self.bn_momentum <= 1 or not self.bn_eps > 0:
            raise ValueError("lr and bn_eps must be positive and bn_momentum in (0, 1]")
        if not 0 <= self.alpha_dropout < 1:
            raise ValueError(f"alpha_dropout is a rate in [0, 1), got {self.alpha_dropout}")
        bnlab.kernels.check_backend_name(self.backend)


def units(config: SeluDeepConfig) -> list[Unit]:
    """One unit per network to train, then the forward diagnostic."""
    return [*({"model": m} for m in config.models), *([{"diagnostic": "init"}] if config.diagnostic else [])]


def _summary_rows(value: Any) -> str | None:
    ok = isinstance(value, list) and all(
        isinstance(r, list) and len(r) == SUMMARY_COLUMNS and isinstance(r[0], str) and isinstance(r[1], str)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in r[2:]) for r in value)
    return None if ok else f"must be a list of [layer, shape, params, trainable, non-trainable] rows, got {value!r:.60}"


def records(config: SeluDeepConfig) -> RecordSchema:
    """``epoch``: Keras's per-epoch log of one network; ``end``: how its training ended; ``summary``: its
    bnlab.summary; ``gradients``: each linear layer's ‖∂L/∂W‖ / ‖W‖ at initialization (the output layer last);
    ``diagnostic``: per-layer mean and std of one network at initialization."""
    per_layer = schema.numbers(length=config.depth)
    return {
        "epoch": {"seed": schema.integer(), "model": schema.text(MODELS), "epoch": schema.integer(1, config.epochs),
                  "loss": schema.number(nullable=True), "accuracy": schema.number(nullable=True),
                  "val_loss": schema.number(nullable=True), "val_accuracy": schema.number(nullable=True)},
        "end": {"seed": schema.integer(), "model": schema.text(MODELS), "steps": schema.integer(0),
                "planned_steps": schema.integer(1), "diverged": schema.boolean(),
                "test_accuracy": schema.number(nullable=True), "seconds": schema.number()},
        "summary": {"seed": schema.integer(), "model": schema.text(MODELS), "rows": schema.Spec(_summary_rows),
                    "total": schema.integer(0), "trainable": schema.integer(0), "non_trainable": schema.integer(0),
                    "counters": schema.integer(0), "text": schema.text()},
        "gradients": {"seed": schema.integer(), "model": schema.text(MODELS),
                      "ratios": schema.numbers(length=config.depth + 1)},
        "diagnostic": {"seed": schema.integer(), "network": schema.text(DIAGNOSTICS), "mean": per_layer,
                       "std": per_layer},
    }
