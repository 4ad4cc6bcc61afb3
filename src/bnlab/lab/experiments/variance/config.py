"""E4's settings, names and record shapes.

Names of initializations (weights only; the networks have no biases):

- ``normal-0.01`` and ``normal-1``: N(0, 0.01²) and N(0, 1), CS231n's "small" and "large" random weights;
- ``standard``: Glorot & Bengio's "standard" U[−1/√fan_in, 1/√fan_in] (variance 1 / (3·fan_in));
- ``glorot_normal``, ``glorot_uniform`` (their "normalized"), ``he_normal``, ``lecun_normal``: :mod:`bnlab.init`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = ["ACTIVATIONS", "INITS", "INPUTS", "JACOBIAN_INITS", "Activation", "Init", "VarianceConfig", "records",
           "units"]

Init = Literal["normal-0.01", "normal-1", "standard", "glorot_normal", "glorot_uniform", "he_normal", "lecun_normal"]
Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu"]
Input = Literal["gaussian", "images"]

INITS: tuple[Init, ...] = ("normal-0.01", "normal-1", "glorot_normal", "glorot_uniform", "he_normal", "lecun_normal")
ACTIVATIONS: tuple[Activation, ...] = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu")
INPUTS: tuple[Input, ...] = ("gaussian", "images")
JACOBIAN_INITS: tuple[Init, ...] = ("glorot_uniform", "standard")  # Glorot's "normalized" and "standard"
INIT_LABELS = {"normal-0.01": "N(0, 0.01²)", "normal-1": "N(0, 1)", "standard": "U[±1/√n] (standard)",
               "glorot_normal": "Glorot normal", "glorot_uniform": "Glorot uniform", "he_normal": "He normal",
               "lecun_normal": "LeCun normal (1/fan_in)"}
MAX_WIDTH = 4096
MAX_DEPTH = 1000


@dataclass(frozen=True)
class VarianceConfig:
    """Settings of E4. Defaults are the full run (CS231n's 1,000 × 500 inputs, 10 layers of 500)."""

    inputs: tuple[Input, ...] = INPUTS  # gaussian: N(0, 1) rows; images: standardized images of `dataset`
    dataset: str = "fashion-mnist"  # the images input (any of bnlab.data.DATASET_NAMES)
    samples: int = 1000  # rows of each input (a batch: batch norm's statistics are over them)
    width: int = 500  # units per layer
    depth: int = 10  # layers
    inits: tuple[Init, ...] = INITS
    activations: tuple[Activation, ...] = ACTIVATIONS
    batch_norm: tuple[bool, ...] = (False, True)  # without, and with BN before the activation (batch statistics)
    leak: float = 0.01  # LeakyReLU's slope (seed 004: "usually 0.01")
    bins: int = 60  # histogram bins per layer
    selu_depth: int = 100  # the self-normalizing check: SELU + LeCun normal over this many layers
    jacobian_width: int = 1000  # Glorot's check: a tanh net of jacobian_depth layers of this width
    jacobian_depth: int = 5
    jacobian_samples: int = 4  # examples whose Jacobians' singular values are averaged
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        for name in ("inputs", "inits", "activations", "batch_norm"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must list at least one value, each once, got {values}")
        if self.samples < 2:
            raise ValueError(f"samples must be at least 2 (batch norm needs two values), got {self.samples}")
        for name, low, high in (("width", 2, MAX_WIDTH), ("depth", 2, MAX_DEPTH), ("selu_depth", 1, MAX_DEPTH),
                                ("jacobian_width", 2, MAX_WIDTH), ("jacobian_depth", 2, 100),
                                ("jacobian_samples", 1, 1000), ("bins", 2, 1000)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {getattr(self, name)}")
        if self.samples * max(self.width, self.jacobian_width) > 50_000_000:
            raise ValueError("samples × width is more than 50 million values per layer; make one of them smaller")
        if not 0 <= self.leak < 1:
            raise ValueError(f"leak must be in [0, 1), got {self.leak}")
        bnlab.kernels.check_backend_name(self.backend)


def units(config: VarianceConfig) -> list[Unit]:
    """One unit per input and activation (every initialization, with and without BN), the deep SELU check per
    input, and Glorot's Jacobian check."""
    grid: list[Unit] = [{"input": i, "activation": a} for i in config.inputs for a in config.activations]
    return [*grid, *({"selu_deep": i} for i in config.inputs), {"jacobian": "tanh"}]


def records(config: VarianceConfig) -> RecordSchema:
    """``layers``: one network's per-layer statistics; ``selu``: the deep SELU's; ``jacobian``: Glorot's check."""
    per_layer = schema.numbers(length=config.depth)
    return {
        "layers": {"seed": schema.integer(), "input": schema.text(INPUTS), "activation": schema.text(ACTIVATIONS),
                   "init": schema.text(INIT_LABELS), "batch_norm": schema.boolean(),
                   **{k: per_layer for k in ("z_std", "pre_mean", "pre_std", "h_mean", "h_std", "saturated",
                                             "g_mean", "g_std")}},
        "selu": {"seed": schema.integer(), "input": schema.text(INPUTS),
                 "mean": schema.numbers(length=config.selu_depth), "std": schema.numbers(length=config.selu_depth)},
        "jacobian": {"seed": schema.integer(), "init": schema.text(INIT_LABELS),
                     "singular": schema.numbers(length=config.jacobian_depth - 1)},
    }
