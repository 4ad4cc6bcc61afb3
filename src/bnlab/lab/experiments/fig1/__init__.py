"""``fig1``: Figure 1 of Ioffe & Szegedy (2015), a sigmoid MLP on MNIST-like digits, with and without batch norm.

:mod:`~.config` (settings, record shapes) → :mod:`~.train` (the networks, one unit of work each) →
:mod:`~.claims` (numbers and verdicts from the records) → :mod:`~.plots` (the figures). docs/experiments.md
explains the choices and the calibration.
"""

from __future__ import annotations

from bnlab.lab.experiments.fig1.claims import headline, summarize
from bnlab.lab.experiments.fig1.config import (
    CLAIM_STEPS,
    MODELS,
    PERCENTILES,
    Fig1Config,
    eval_steps,
    records,
)
from bnlab.lab.experiments.fig1.plots import plot
from bnlab.lab.experiments.fig1.train import build_pair, prepare, prepare_pixels, train, units
from bnlab.lab.registry import Experiment

__all__ = ["CLAIM_STEPS", "EXPERIMENT", "MODELS", "PERCENTILES", "Fig1Config", "build_pair", "eval_steps",
           "prepare", "prepare_pixels", "train"]


def _columns(config: Fig1Config) -> dict[str, str]:
    return {"data set": config.dataset, "steps": f"{config.steps:,}"}


EXPERIMENT = Experiment(
    name="fig1",
    summary="Figure 1: sigmoid MLP with and without BN (test accuracy, drift of the sigmoid inputs)",
    config_cls=Fig1Config,
    train=train,
    summarize=summarize,
    plot=plot,
    records=records,
    quick={"steps": 10_000, "eval_every": 250},
    smoke={"dataset": "synthetic", "steps": 60, "eval_every": 20, "hidden": 16},
    prepare=prepare,
    units=units,
    threads=1,  # an MLP on batches of 60: a second intra-op thread costs more than it gives (docs/experiments.md)
    columns=_columns,
    headline=headline,
    order=1,
)
