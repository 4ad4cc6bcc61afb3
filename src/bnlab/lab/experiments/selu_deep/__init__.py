"""``selu_deep`` (E3): Géron's 100-layer network on Fashion-MNIST (seed 004; Klambauer et al. 2017).

100 hidden Dense(100) layers: SELU with LeCun normal weights, ReLU with He normal weights, and ReLU with batch
norm before each activation; plain SGD at lr 1e-3 in batches of 32 for 5 epochs on Géron's 55,000 / 5,000 split,
logged per epoch as Keras logs it and set beside seed 004's log; each model's :func:`bnlab.summary`; and the
forward diagnostic (each layer's mean and std at initialization). :mod:`~.config` → :mod:`~.nets` →
:mod:`~.train` → :mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.selu_deep import claims, plots, train
from bnlab.lab.experiments.selu_deep.config import SeluDeepConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "SeluDeepConfig", "claims", "plots", "train"]


def _columns(config: SeluDeepConfig) -> dict[str, str]:
    images = "55,000" if not config.train_size else f"{config.train_size:,}"
    return {"data set": f"{config.dataset} ({images} training images)", "epochs": f"{config.epochs}"}


EXPERIMENT = Experiment(
    name="selu_deep",
    summary="E3: 100-layer SELU vs ReLU + He vs ReLU + BN on Fashion-MNIST (Géron's log, seed 004), with "
            "bnlab.summary",
    config_cls=SeluDeepConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    quick={"train_size": 6_400, "epochs": 1},  # 3 × 200 steps: the tour gives E3 35 s
    smoke={"dataset": "synthetic", "depth": 6, "width": 16, "epochs": 2, "validation": 100, "batch_size": 20,
           "diagnostic_samples": 50},
    prepare=train.prepare,
    units=units,
    threads=1,
    columns=_columns,
    headline=claims.headline,
    order=3,
)
