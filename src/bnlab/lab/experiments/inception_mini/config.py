"""E1b's settings, its variants (the rows of the paper's Figure 3), and the shape of the records it writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import bnlab
from bnlab.data import DATASET_NAMES
from bnlab.lab import schema
from bnlab.lab.experiments.inception_mini.nets import Activation
from bnlab.lab.registry import Unit
from bnlab.lab.schema import RecordSchema

__all__ = ["BASELINE", "DECAY_SPEEDUP", "L2_REDUCTION", "VARIANTS", "VARIANT_NAMES", "Hyper", "InceptionConfig",
           "Variant", "VariantName", "eval_steps", "hyper", "records", "units"]

VariantName = Literal["inception", "bn-baseline", "bn-x5", "bn-x30", "bn-x5-sigmoid", "inception-x5",
                      "inception-sigmoid"]

# §4.2.1 of the paper: "the weight of this loss is reduced by a factor of 5"; "we lower the learning rate 6 times
# faster".
L2_REDUCTION = 5.0
DECAY_SPEEDUP = 6.0
MAX_STEPS = 10_000_000
MAX_EVALUATIONS = 2_000
MAX_WIDTH = 256


@dataclass(frozen=True)
class Variant:
    """One row of Figure 3.

    Attributes:
        label: the paper's name for it.
        batch_norm: BN before every nonlinearity.
        activation: "relu" or "sigmoid".
        lr_multiple: the initial learning rate as a multiple of the baseline's η0.
        accelerated: the §4.2.1 changes that have a counterpart here: no dropout, L2 weight / 5, learning-rate
            decay 6× faster, no LRN.
        paper_steps: the paper's steps to reach Inception's best accuracy (72.2%); None where it never does or
            the paper does not say.
        paper_best: the paper's best validation accuracy (single crop, top-1); None where it gives none.
        paper_note: what the paper says of it, when there is no number.
    """

    label: str
    batch_norm: bool
    activation: Activation
    lr_multiple: float
    accelerated: bool
    paper_steps: float | None
    paper_best: float | None
    paper_note: str = ""


VARIANTS: dict[str, Variant] = {
    "inception": Variant("Inception", False, "relu", 1.0, False, 31.0e6, 0.722),
    "bn-baseline": Variant("BN-Baseline", True, "relu", 1.0, False, 13.3e6, 0.727),
    "bn-x5": Variant("BN-x5", True, "relu", 5.0, True, 2.1e6, 0.730),
    "bn-x30": Variant("BN-x30", True, "relu", 30.0, True, 2.7e6, 0.748),
    "bn-x5-sigmoid": Variant("BN-x5-Sigmoid", True, "sigmoid", 5.0, True, None, 0.698, "never reaches 72.2%"),
    "inception-x5": Variant("Inception-x5 (no BN)", False, "relu", 5.0, False, None, None,
                            "\"the model parameters reach machine infinity\""),
    "inception-sigmoid": Variant("Inception-Sigmoid (no BN)", False, "sigmoid", 1.0, False, None, None,
                                 "\"remained at the accuracy equivalent to chance\""),
}
VARIANT_NAMES: tuple[VariantName, ...] = ("inception", "bn-baseline", "bn-x5", "bn-x30", "bn-x5-sigmoid",
                                          "inception-x5", "inception-sigmoid")
BASELINE: VariantName = "inception"


@dataclass(frozen=True)
class InceptionConfig:
    """Settings of E1b. Defaults are the full CPU run; docs/experiments.md records how ``lr`` was chosen (on the
    baseline alone) and what the paper leaves unstated (momentum, L2 weight, decay constants)."""

    dataset: str = "fashion-mnist"  # any of bnlab.data.DATASET_NAMES
    validation: int = 5_000  # training images held out; accuracy is measured on them (the paper: validation)
    steps: int = 8_000  # SGD steps per variant (batch 32: 8,000 steps ≈ 4.7 epochs of 55,000 images)
    eval_every: int = 250  # the evaluation grid: the resolution of "steps to reach"
    batch_size: int = 32  # the paper's
    lr: float = 0.03  # η0, the baseline's initial learning rate (chosen on the baseline alone, docs/experiments.md)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the baseline's L2 weight (SGD weight_decay, the gradient of wd/2·‖w‖²)
    lr_half_life: int = 8_000  # the baseline's exponential decay: its learning rate halves every this many steps
    dropout: float = 0.4  # before the classifier, in the baseline (GoogLeNet's 40%)
    lrn: bool = True  # LRN in the baseline's stem (removed by the accelerated variants)
    width: int = 16  # base width of the network (channels of the first convolution)
    bn_momentum: float = 0.1  # running-statistics momentum of the BN layers (PyTorch convention)
    backend: str = "auto"  # bnlab batch-norm backend
    variants: tuple[VariantName, ...] = VARIANT_NAMES  # the rows of Figure 3 to train

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}")
        for name in ("steps", "eval_every", "lr_half_life", "width", "validation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps must be at most {MAX_STEPS:,}, got {self.steps:,}")
        if self.steps // self.eval_every > MAX_EVALUATIONS:
            raise ValueError(f"steps / eval_every is {self.steps // self.eval_every:,} evaluations; at most "
                             f"{MAX_EVALUATIONS:,}: make eval_every at least {-(-self.steps // MAX_EVALUATIONS):,}")
        if self.width > MAX_WIDTH:
            raise ValueError(f"width must be at most {MAX_WIDTH}, got {self.width}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch norm needs two values), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must name at least one of {', '.join(VARIANT_NAMES)}, each once, got "
                             f"{','.join(self.variants)}")
        bnlab.kernels.check_backend_name(self.backend)


def eval_steps(config: InceptionConfig) -> list[int]:
    """0, every ``eval_every`` steps, and the last step."""
    return sorted(set(range(0, config.steps + 1, config.eval_every)) | {config.steps})


def units(config: InceptionConfig) -> list[Unit]:
    """One unit of work per variant."""
    return [{"variant": v} for v in config.variants]


def records(config: InceptionConfig) -> RecordSchema:
    """``eval``: one per variant and evaluation step; ``end``: one when a variant stops (diverged or not)."""
    return {
        "eval": {"seed": schema.integer(), "variant": schema.text(VARIANT_NAMES),
                 "step": schema.integer(0, config.steps), "train_loss": schema.number(nullable=True),
                 "val_accuracy": schema.number(nullable=True), "lr": schema.number(),
                 "weight_norm": schema.number(nullable=True)},
        "end": {"seed": schema.integer(), "variant": schema.text(VARIANT_NAMES),
                "steps": schema.integer(0, config.steps), "diverged": schema.boolean(), "seconds": schema.number()},
    }


@dataclass(frozen=True)
class Hyper:
    """One variant's training settings, derived from the configuration and :data:`VARIANTS`.

    ``lr(step) = lr · 0.5 ** (step / lr_half_life)``: exponential decay, as the paper's (whose constants it does
    not give).
    """

    lr: float
    dropout: float
    weight_decay: float
    lr_half_life: float
    lrn: bool

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (from 1; step 1 uses ``lr``)."""
        return self.lr * 0.5 ** ((step - 1) / self.lr_half_life)


def hyper(config: InceptionConfig, name: str) -> Hyper:
    """The variant ``name``'s settings: the baseline's, with the initial rate times its multiple; an accelerated
    variant (§4.2.1) also drops dropout and LRN, divides the L2 weight by 5 and decays 6× faster."""
    v = VARIANTS[name]
    if v.accelerated:
        return Hyper(config.lr * v.lr_multiple, 0.0, config.weight_decay / L2_REDUCTION,
                     config.lr_half_life / DECAY_SPEEDUP, False)
    return Hyper(config.lr * v.lr_multiple, config.dropout, config.weight_decay, float(config.lr_half_life),
                 config.lrn)
