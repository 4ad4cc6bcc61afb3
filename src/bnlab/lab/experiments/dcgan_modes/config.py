"""E5's settings, names and record shapes.

Names used throughout:

- generators: ``bn`` (batch norm after each hidden transposed convolution, the DCGAN generator) and ``plain``
  (the same network without it; a zero-initialized bias takes BN's β's place), seed 000's two models;
- sampling modes: ``train`` (batch statistics of each batch of ``sample_batch`` z), ``eval`` (the running
  statistics training left), ``recalibrated`` (eval mode after :func:`bnlab.recalibrate`), ``train-batch1``
  (batch statistics of one z at a time: the 7 × 7 and 14 × 14 maps still give 49 and 196 values per channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = ["GENERATORS", "GENERATOR_LABELS", "MODES", "MODE_LABELS", "DcganConfig", "Generator", "Mode", "records",
           "units"]

Generator = Literal["bn", "plain"]
Mode = Literal["train", "eval", "recalibrated", "train-batch1"]
RecalibrationMode = Literal["pooled", "paper", "cumulative"]  # bnlab.recalibrate's modes

GENERATORS: tuple[Generator, ...] = ("bn", "plain")
MODES: tuple[Mode, ...] = ("train", "eval", "recalibrated", "train-batch1")
GENERATOR_LABELS = {"bn": "generator with BN", "plain": "generator without BN"}
MODE_LABELS = {"train": "train mode (batch statistics)", "eval": "eval mode (running statistics)",
               "recalibrated": "eval mode after recalibration", "train-batch1": "train mode, batch of 1"}
REFERENCE_UNIT = "classifier"
MAX_STEPS = 1_000_000
MAX_WIDTH = 2048
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class DcganConfig:
    """Settings of E5. Defaults are the full CPU run of EXPERIMENTS.md §6.C: Fashion-MNIST, two epochs at batch
    128, the DCGAN paper's optimizer and initialization, 1,000 scored samples per mode."""

    dataset: str = "fashion-mnist"  # any of bnlab.data.DATASET_NAMES; pixels are scaled to [-1, 1]
    steps: int = 936  # optimizer steps per network (2 epochs of 60,000 at batch 128)
    batch_size: int = 128  # the paper's mini-batch (the PyTorch example uses 64)
    latent: int = 100  # z ~ N(0, I) of this many values
    g_width: int = 256  # channels of G's first transposed convolution; the second has half
    d_width: int = 64  # channels of D's first convolution; the second has twice as many
    lr: float = 2e-4  # Adam, both networks (the paper)
    beta1: float = 0.5  # Adam's β1 (the paper); β2 = 0.999
    init_std: float = 0.02  # conv weights ~ N(0, 0.02²), BN's γ ~ N(1, 0.02²), biases and β 0 (the paper, the example)
    generators: tuple[Generator, ...] = GENERATORS  # the generators to train, each with its own discriminator
    d_batch_norm: bool = True  # BN in D's middle layer (not its input layer: the paper)
    bn_momentum: float = 0.1  # running-statistics momentum of every BN layer (PyTorch's)
    loss_every: int = 10  # steps between two points of the loss curves (each the mean since the previous)
    grid: int = 64  # fixed z shown as an 8 × 8 grid in every mode (and the batch of the batch-dependence test)
    sample_batch: int = 64  # batch of z in train mode (the PyTorch example's fixed-noise batch)
    score_samples: int = 1000  # samples scored by the reference classifier, per generator and mode
    recal_batches: int = 100  # batches of batch_size z that recalibration averages over
    recal_mode: RecalibrationMode = "cumulative"  # bnlab.recalibrate's average (§6.C: cumulative)
    doctor_batches: int = 8  # batches of batch_size z the doctor examines the generator on
    classifier_epochs: int = 3  # the reference classifier's training (trained once per data set, cached)
    backend: str = "auto"  # bnlab batch-norm backend

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS:,}, got {self.steps}")
        for name in ("batch_size", "sample_batch", "grid"):
            if not 2 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name} must be in 2..4096 (batch norm needs two values), got {getattr(self, name)}")
        for name, low, high in (("latent", 1, 4096), ("g_width", 2, MAX_WIDTH), ("d_width", 1, MAX_WIDTH),
                                ("loss_every", 1, MAX_STEPS), ("score_samples", 2, MAX_SAMPLES),
                                ("recal_batches", 1, 100_000), ("doctor_batches", 1, 1000),
                                ("classifier_epochs", 1, 100)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {getattr(self, name)}")
        if self.g_width % 2:
            raise ValueError(f"g_width must be even (the second layer has half as many channels), got {self.g_width}")
        if self.steps // self.loss_every > 20_000:
            raise ValueError(f"steps / loss_every is more than 20,000 loss records; make loss_every at least "
                             f"{-(-self.steps // 20_000)}")
        if not (self.lr > 0 and 0 <= self.beta1 < 1 and self.init_std > 0):
            raise ValueError(f"lr and init_std must be positive and beta1 in [0, 1), got lr={self.lr}, "
                             f"beta1={self.beta1}, init_std={self.init_std}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not self.generators or len(set(self.generators)) != len(self.generators):
            raise ValueError(f"generators must name bn, plain or both, once each, got {','.join(self.generators)}")
        bnlab.kernels.check_backend_name(self.backend)


def units(config: DcganConfig) -> list[Unit]:
    """The reference classifier (made once across runs; scores real images for reference), then one GAN per
    generator: trained, sampled in every mode, scored, examined."""
    return [{"reference": REFERENCE_UNIT}, *({"generator": g} for g in config.generators)]


def records(config: DcganConfig) -> RecordSchema:
    """``classifier``: the reference classifier; ``real``: its scores of real images; ``losses``: a point of the
    loss curves; ``end``: a GAN's training; ``mode``: one generator's samples in one mode, scored; ``batch``: the
    batch-dependence test in one mode; ``doctor``: bnlab.doctor's report on the generator in eval mode."""
    scores = {"confidence": schema.number(), "inception_score": schema.number(),
              "frechet": schema.number(nullable=True), "histogram": schema.numbers(nullable=False),
              "samples": schema.integer(1)}
    seed = schema.integer()
    generator = schema.text(GENERATORS)
    return {
        "classifier": {"seed": seed, "dataset": schema.text(), "test_accuracy": schema.number(),
                       "made": schema.boolean(), "seconds": schema.number(), "classes": schema.integer(1)},
        "real": {"seed": seed, **scores},
        "losses": {"seed": seed, "generator": generator, "step": schema.integer(0, config.steps),
                   **{f"train_{k}": schema.number(nullable=True) for k in ("loss_d", "loss_g", "d_real", "d_fake")}},
        "end": {"seed": seed, "generator": generator, "steps": schema.integer(0, config.steps),
                "diverged": schema.boolean(), "seconds": schema.number()},
        "mode": {"seed": seed, "generator": generator, "mode": schema.text(MODES), **scores},
        "batch": {"seed": seed, "generator": generator, "mode": schema.text(("train", "eval")),
                  "max_abs_diff": schema.number(), "identical": schema.boolean()},
        "doctor": {"seed": seed, "generator": generator, "summary": schema.text(), "text": schema.text(),
                   "healthy": schema.boolean(), "findings": schema.anything()},
    }
