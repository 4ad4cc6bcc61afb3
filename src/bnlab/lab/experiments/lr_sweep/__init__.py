"""``lr_sweep`` (E6): batch norm tolerates larger learning rates (seeds 001 and 003; Bjorck et al. 2018).

A 784 → 8 × 256 → 10 ReLU MLP with He-normal weights, without and with batch norm before each ReLU, trained by
plain SGD for one epoch of Fashion-MNIST at each learning rate of {0.001, …, 3}; and the loss along the gradient,
L(w − αg) / L(w), at initialization and after 10 steps. Each (learning rate, network) is its own unit of work, so
an interrupted sweep resumes run by run. :mod:`~.config` → :mod:`~.train` → :mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.lr_sweep import claims, plots, train
from bnlab.lab.experiments.lr_sweep.config import LrSweepConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "LrSweepConfig", "claims", "plots", "train"]


def _columns(config: LrSweepConfig) -> dict[str, str]:
    images = "all" if not config.train_size else f"{config.train_size:,}"
    return {"data set": f"{config.dataset} ({images} images)", "learning rates": f"{len(config.lrs)}"}


EXPERIMENT = Experiment(
    name="lr_sweep",
    summary="E6: BN tolerates larger learning rates (an 8 × 256 ReLU MLP, one epoch per rate; the loss along "
            "the gradient)",
    config_cls=LrSweepConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    quick={"train_size": 12_800},
    smoke={"dataset": "synthetic", "lrs": [0.01, 0.1, 3.0], "depth": 3, "width": 16, "batch_size": 20,
           "final_window": 5, "check_every": 5, "alpha_count": 7},
    prepare=train.prepare,
    units=units,
    threads=1,
    columns=_columns,
    headline=claims.headline,
    order=6,
)
