"""``fig1``: Figure 1 of Ioffe & Szegedy (2015), a sigmoid MLP on MNIST-like digits, with and without batch norm.

:mod:`~.config` (settings, record shapes) → :mod:`~.train` (the networks, one unit of work each) →
:mod:`~.claims` (numbers and verdicts from the records) → :mod:`~.plots` (the figures). docs/experiments.md
explains the choices and the calibration.
"""

from __future__ import annotations

from bnlab.lab.experiments.fig1 import claims, plots, train
from bnlab.lab.experiments.fig1.config import CLAIM_STEPS, MODELS, PERCENTILES, Fig1Config, eval_steps, records
from bnlab.lab.experiments.fig1.train import build_pair, prepare_pixels
from bnlab.lab.registry import Experiment

# The modules keep their names (fig1.train is the module; its function is fig1.train.train).
__all__ = ["CLAIM_STEPS", "EXPERIMENT", "MODELS", "PERCENTILES", "Fig1Config", "build_pair", "claims", "eval_steps",
           "plots", "prepare_pixels", "train"]


def _columns(config: Fig1Config) -> dict[str, str]:
    return {"data set": config.dataset, "steps": f"{config.steps:,}"}


EXPERIMENT = Experiment(
    name="fig1",
    summary="Figure 1: sigmoid MLP with and without BN (test accuracy, drift of the sigmoid inputs)",
    config_cls=Fig1Config,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    quick={"steps": 10_000, "eval_every": 250},
    smoke={"dataset": "synthetic", "steps": 60, "eval_every": 20, "hidden": 16},
    prepare=train.prepare,
    units=train.units,
    trains_on_processes=True,  # engine.train: --nproc shares its batches
    threads=1,  # an MLP on batches of 60: a second intra-op thread costs more than it gives (docs/experiments.md)
    columns=_columns,
    headline=claims.headline,
    order=1,
)
