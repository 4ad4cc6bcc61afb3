"""``inception_mini`` (E1b): the paper's "Accelerating BN networks" (Ioffe & Szegedy 2015, §4.2, Figure 3) at the
scale of Fashion-MNIST.

A mini BN-Inception (modules with 1×1, 3×3 and double-3×3 branches) trained with SGD and momentum at batch 32, as
the paper's variants: Inception (the baseline, with dropout), BN-Baseline, BN-x5 and BN-x30 (5× and 30× the
learning rate with the §4.2.1 changes), BN-x5-Sigmoid, and, without BN, Inception-x5 and Inception-Sigmoid. The
report gives the table "steps to reach the baseline's best accuracy / best accuracy" beside the paper's numbers,
and the accuracy-against-steps curves. :mod:`~.config` → :mod:`~.nets` → :mod:`~.train` (one unit per variant)
→ :mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.inception_mini import claims, nets, plots, train
from bnlab.lab.experiments.inception_mini.config import VARIANT_NAMES, VARIANTS, InceptionConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "VARIANTS", "VARIANT_NAMES", "InceptionConfig", "claims", "nets", "plots", "train"]


def _columns(config: InceptionConfig) -> dict[str, str]:
    return {"data set": config.dataset, "steps": f"{config.steps:,}", "width": str(config.width)}


EXPERIMENT = Experiment(
    name="inception_mini",
    summary="E1b: Figure 3, accelerating BN networks: steps to reach the baseline's best, mini Inception",
    config_cls=InceptionConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    # The quick version keeps every variant and claim and shrinks the rest to fit the tour's 45 s of CPU: base
    # width 4 instead of 16, 125 steps instead of 8,000 (the decay's half-life with them), evaluations every 25
    # steps on 300 validation images (docs/experiments.md gives its time and verdicts).
    quick={"steps": 125, "eval_every": 25, "lr_half_life": 125, "width": 4, "validation": 300},
    smoke={"dataset": "synthetic", "validation": 100, "steps": 8, "eval_every": 4, "lr_half_life": 8, "width": 2},
    prepare=train.prepare,
    units=units,
    threads=1,  # small convolutions on batches of 32: one thread (docs/experiments.md)
    columns=_columns,
    headline=claims.headline,
    order=2,
)
