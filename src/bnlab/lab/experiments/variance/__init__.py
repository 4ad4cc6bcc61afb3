"""``variance`` (E4): vanishing and exploding signals at initialization, by initialization and activation.

Seed 004; Glorot & Bengio (2010); He et al. (2015); the CS231n demonstration. Networks of 10 layers of 500 units,
no biases, on N(0, 1) inputs and on standardized Fashion-MNIST images, for six initializations × six activations
× without and with batch norm before the activation, measured at initialization (nothing is trained): each
layer's activations and back-propagated gradients, their histograms, the 100-layer SELU check and Glorot's
Jacobian singular values. :mod:`~.config` → :mod:`~.nets` (the measurements) → :mod:`~.train` (units of work)
→ :mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.variance import claims, plots, train
from bnlab.lab.experiments.variance.config import VarianceConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "VarianceConfig", "claims", "plots", "train"]


def _columns(config: VarianceConfig) -> dict[str, str]:
    return {"inputs": ", ".join(config.inputs), "networks": f"{config.depth} × {config.width}"}


EXPERIMENT = Experiment(
    name="variance",
    summary="E4: vanishing/exploding signals at initialization by init × activation, with and without BN",
    config_cls=VarianceConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    # The quick version keeps every network and claim and shrinks the batches: 250 rows instead of 1,000 (the
    # statistics are over 125,000 values per layer), the Jacobian check at width 500.
    quick={"samples": 250, "jacobian_width": 500, "jacobian_samples": 2},
    smoke={"dataset": "synthetic", "samples": 40, "width": 24, "depth": 4, "inits": ["normal-0.01", "he_normal"],
           "activations": ["tanh", "relu"], "selu_depth": 6, "jacobian_width": 16, "jacobian_depth": 3,
           "jacobian_samples": 2, "bins": 10},
    prepare=train.prepare,
    units=units,
    # One thread: on a 2-core machine shared with other jobs, a second intra-op thread made a unit 7× slower
    # (26.7 s against 3.8 s, measured while other test runs were busy; docs/experiments.md).
    threads=1,
    columns=_columns,
    headline=claims.headline,
    order=4,
)
