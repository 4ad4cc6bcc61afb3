"""E2's settings, its names and the shape of the records it writes.

Networks: ``cnn`` (the VGG-style CNN on images) and ``dln`` (the deep linear network on synthetic y = A·x).
Variants of the CNN: ``standard`` (no BN), ``bn`` (BN before every ReLU), ``bn_noise`` (BN, then Santurkar-style
noise, before every ReLU) and ``noise`` (the noise without BN); the DLN has ``standard`` and ``bn``. Part (a) trains
Standard and Standard + noise at ``lr`` and the BN variants at ``bn_lr``. Parts (b) and (c) compare Standard and
BN at the *same* learning rate: their probes ride on the ``standard`` run and on a BN run at ``lr``, which is the
``bn`` run when ``bn_lr`` equals ``lr`` and otherwise one more unit, ``bn_same_lr`` (:func:`probed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = [
    "DLN_VARIANTS",
    "NETS",
    "PERCENTILES",
    "RECORD_VARIANTS",
    "VARIANTS",
    "SanturkarConfig",
    "Variant",
    "cnn_lr",
    "ics_steps",
    "landscape_steps",
    "probed",
    "records",
    "trace_steps",
    "units",
]

Variant = Literal["standard", "bn", "bn_noise", "noise"]
Net = Literal["cnn", "dln"]
VARIANTS: tuple[Variant, ...] = ("standard", "bn", "bn_noise", "noise")
DLN_VARIANTS: tuple[Variant, ...] = ("standard", "bn")
# Every variant a record may name: the CNN variants and the BN network at Standard's learning rate.
RECORD_VARIANTS = (*VARIANTS, "bn_same_lr")
NETS: tuple[Net, ...] = ("cnn", "dln")
PERCENTILES = (15, 50, 85)
CNN_LAYERS = 7  # five convolutions and two fully connected layers
MAX_STEPS = 1_000_000
MAX_CHANNELS = 1024
MAX_PROBES = 2_000  # sampled steps per probe and network: each writes a record


@dataclass(frozen=True)
class SanturkarConfig:
    """Settings of E2. Defaults are the full run the issue asks for (CPU hours on 2 cores; docs/experiments.md)."""

    dataset: str = "fashion-mnist"  # images for the CNN (any of bnlab.data.DATASET_NAMES)
    variants: tuple[Variant, ...] = VARIANTS  # the CNN variants to train
    channels: tuple[int, ...] = (32, 32, 64, 64, 128)  # the five conv layers (2×2 max-pool after 2nd, 4th, 5th)
    fc: int = 256  # the hidden fully connected layer
    steps: int = 1400  # SGD steps per CNN (about 3 epochs of 60,000 at batch 128)
    batch_size: int = 128
    lr: float = 0.02  # Standard, Standard + noise, and the BN net probed beside Standard (calibrated: its best)
    bn_lr: float = 0.1  # BN and BN + noise in part (a)
    momentum: float = 0.9  # SGD with momentum
    eval_every: int = 100  # training loss and accuracy (train mode, mean since the last evaluation), test accuracy
    test_samples: int = 5000  # the first this many test images are evaluated (eval mode)
    noise_mean: float = 0.5  # noise: per step and feature μ ~ U(−noise_mean, noise_mean)
    noise_scale: float = 1.25  # and σ ~ U(1, noise_scale); "severe": 2 and 4
    trace_layers: tuple[int, int] = (3, 5)  # the layers whose pre-activation percentiles are traced
    unit: int = 0  # the traced unit (channel) in each of them
    trace_every: int = 5  # steps between traced forward passes
    probe_every: int = 50  # steps between ICS and landscape probes (and step 1)
    etas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)  # landscape step sizes (η·g)
    dln: bool = True  # also the deep linear network (part b)
    dln_depth: int = 25
    dln_width: int = 10
    dln_samples: int = 2048  # x ~ N(0, I), y = A·x, A with N(0, 1/width) entries (fixed by the seed)
    dln_batch_size: int = 128
    dln_steps: int = 2000
    dln_lr: float = 0.02  # plain SGD (calibrated so that both variants converge; docs/experiments.md)
    dln_probe_every: int = 20  # steps between ICS probes of the DLN (and step 1)
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must name each variant once, got {','.join(self.variants)}")
        if not self.variants and not self.dln:
            raise ValueError("nothing to train: give at least one CNN variant or set dln=true")
        if len(self.channels) != 5 or not all(1 <= c <= MAX_CHANNELS for c in self.channels):
            raise ValueError(f"channels must be five counts in 1..{MAX_CHANNELS} (conv1..conv5), got {self.channels}")
        for name, low, high in (("fc", 1, 65_536), ("steps", 1, MAX_STEPS), ("batch_size", 2, 65_536),
                                ("eval_every", 1, MAX_STEPS), ("test_samples", 0, 1_000_000),
                                ("trace_every", 1, MAX_STEPS), ("probe_every", 1, MAX_STEPS),
                                ("dln_depth", 2, 1000), ("dln_width", 1, 4096), ("dln_samples", 2, 10_000_000),
                                ("dln_batch_size", 2, 65_536), ("dln_steps", 1, MAX_STEPS),
                                ("dln_probe_every", 1, MAX_STEPS)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in {low:,}..{high:,}, got {getattr(self, name):,}")
        for name in ("lr", "bn_lr", "dln_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.noise_mean >= 0 and self.noise_scale >= 1):
            raise ValueError(f"the noise needs noise_mean ≥ 0 and noise_scale ≥ 1, got {self.noise_mean}, "
                             f"{self.noise_scale}")
        if not all(1 <= k <= CNN_LAYERS - 1 for k in self.trace_layers):
            raise ValueError(f"trace_layers must be hidden layers in 1..{CNN_LAYERS - 1}, got {self.trace_layers}")
        widths = (*self.channels, self.fc)
        if not all(0 <= self.unit < widths[k - 1] for k in self.trace_layers):
            raise ValueError(f"unit {self.unit} is not a feature of every traced layer (widths "
                             f"{[widths[k - 1] for k in self.trace_layers]})")
        if not self.etas or any(not eta > 0 for eta in self.etas):
            raise ValueError(f"etas must be positive step sizes, at least one, got {self.etas}")
        if self.dln_batch_size > self.dln_samples:
            raise ValueError(f"dln_batch_size {self.dln_batch_size} is more than dln_samples {self.dln_samples}")
        for name, steps, every in (("probe_every", self.steps, self.probe_every),
                                   ("dln_probe_every", self.dln_steps, self.dln_probe_every),
                                   ("trace_every", self.steps, self.trace_every)):
            if steps // every > MAX_PROBES * (10 if name == "trace_every" else 1):
                raise ValueError(f"{name}={every} samples too many steps ({steps // every:,}); make it larger")
        bnlab.kernels.check_backend_name(self.backend)


def probed(config: SanturkarConfig) -> tuple[str, str]:
    """The CNN variants whose runs carry the ICS and landscape probes: Standard, and BN at Standard's learning
    rate (``bn`` when ``bn_lr`` equals ``lr``, else ``bn_same_lr``)."""
    return "standard", "bn" if config.bn_lr == config.lr else "bn_same_lr"


def cnn_lr(config: SanturkarConfig, variant: str) -> float:
    """The learning rate of a CNN variant: ``bn_lr`` for BN and BN + noise, ``lr`` for the others."""
    return config.bn_lr if variant in ("bn", "bn_noise") else config.lr


def units(config: SanturkarConfig) -> list[Unit]:
    """One unit per network to train: each CNN variant, BN at Standard's learning rate when it is another run,
    then the DLN without and with BN."""
    cnns: list[Unit] = [{"net": "cnn", "variant": v} for v in config.variants]
    if probed(config)[1] == "bn_same_lr" and "standard" in config.variants:
        cnns.append({"net": "cnn", "variant": "bn_same_lr"})
    return [*cnns, *({"net": "dln", "variant": v} for v in DLN_VARIANTS if config.dln)]


def _every(steps: int, every: int) -> list[int]:
    return sorted({1, *range(every, steps + 1, every)})


def trace_steps(config: SanturkarConfig) -> list[int]:
    """The steps whose training forward pass the percentile trace samples: step 1, then every ``trace_every``."""
    return _every(config.steps, config.trace_every)


def landscape_steps(config: SanturkarConfig) -> list[int]:
    """The CNN steps the ICS and landscape probes sample: step 1, then every ``probe_every``."""
    return _every(config.steps, config.probe_every)


def ics_steps(config: SanturkarConfig, net: str) -> list[int]:
    """The steps the ICS probe samples on ``net``."""
    return landscape_steps(config) if net == "cnn" else _every(config.dln_steps, config.dln_probe_every)


def records(config: SanturkarConfig) -> RecordSchema:
    """``eval``: training loss and accuracy since the last evaluation and test accuracy; ``trace``: one unit's
    pre-activation percentiles over training; ``ics``: one probe of Definition 2.1, per layer from the second;
    ``landscape``: one probe along the gradient, per η; ``end``: how a network's training ended."""
    net, variant = schema.text(NETS), schema.text(RECORD_VARIANTS)
    top = max(config.steps, config.dln_steps)
    k = len(config.etas)
    return {
        "eval": {"seed": schema.integer(), "net": net, "variant": variant, "step": schema.integer(0, top),
                 "train_loss": schema.number(nullable=True), "train_accuracy": schema.number(nullable=True),
                 "test_accuracy": schema.number(nullable=True)},
        "trace": {"seed": schema.integer(), "variant": variant, "layer": schema.integer(1, CNN_LAYERS),
                  "steps": schema.numbers(nullable=False),
                  **{f"p{p}": schema.numbers() for p in PERCENTILES}},
        "ics": {"seed": schema.integer(), "net": net, "variant": variant, "step": schema.integer(1, top),
                "layers": schema.numbers(nullable=False), "l2": schema.numbers(), "grad_norm": schema.numbers(),
                "cosine": schema.numbers()},
        "landscape": {"seed": schema.integer(), "net": net, "variant": variant, "step": schema.integer(1, top),
                      "loss": schema.number(nullable=True), "grad_norm": schema.number(nullable=True),
                      "losses": schema.numbers(length=k), "grad_changes": schema.numbers(length=k)},
        "end": {"seed": schema.integer(), "net": net, "variant": variant, "steps": schema.integer(0, top),
                "diverged": schema.boolean(), "seconds": schema.number()},
    }
