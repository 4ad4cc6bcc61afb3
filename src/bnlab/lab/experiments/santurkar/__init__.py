"""``santurkar`` (E2): Santurkar, Tsipras, Ilyas & Mądry (2018), "How Does Batch Normalization Help Optimization?".

The second half of seed 003. Three parts, "Santurkar-style" (the paper's appendix, with its exact noise and step
grid, is not checked: EXPERIMENTS.md §8): (a) noisy BN: a small VGG-style CNN on Fashion-MNIST as Standard, + BN,
+ BN + noise and + noise, training accuracy and one unit's pre-activation percentiles; (b) internal covariate
shift measured through gradients (Definition 2.1) on the CNN and on a 25-layer deep linear network; (c) the
landscape along the gradient (loss variation, gradient predictiveness, effective β-smoothness).
:mod:`~.config` → :mod:`~.nets` → :mod:`~.train` (units of work; the probes are
:class:`bnlab.lab.train.CovariateShiftProbe` and :class:`bnlab.lab.train.LandscapeProbe`) → :mod:`~.measures` →
:mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.santurkar import claims, plots, train
from bnlab.lab.experiments.santurkar.config import SanturkarConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "SanturkarConfig", "claims", "plots", "train"]


def _columns(config: SanturkarConfig) -> dict[str, str]:
    return {"data set": config.dataset, "steps": f"{config.steps:,}",
            "CNN": f"{'-'.join(map(str, config.channels))}, fc {config.fc}"}


EXPERIMENT = Experiment(
    name="santurkar",
    summary="E2: noisy BN, internal covariate shift through gradients, the landscape along the gradient",
    config_cls=SanturkarConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    # The tour's version (docs/experiments.md gives its time): a CNN of a quarter of the widths, batches of 32,
    # 180 steps (evaluated every 60), 500 test images, 5 probes of 4 step sizes; a DLN of 200 steps.
    quick={"channels": [8, 8, 16, 16, 32], "fc": 64, "batch_size": 32, "steps": 180, "eval_every": 60,
           "test_samples": 500, "probe_every": 45, "etas": [0.1, 0.2, 0.3, 0.4], "dln_steps": 200,
           "dln_probe_every": 25},
    smoke={"dataset": "synthetic", "channels": [4, 4, 4, 4, 4], "fc": 8, "steps": 20, "batch_size": 16,
           "eval_every": 10, "test_samples": 50, "trace_every": 2, "probe_every": 10, "etas": [0.05, 0.2],
           "dln_depth": 6, "dln_samples": 64, "dln_batch_size": 16, "dln_steps": 20, "dln_probe_every": 10},
    prepare=train.prepare,
    units=units,
    threads=1,  # small convolutions and a width-10 network: a second thread on a shared 2-core machine costs more
    columns=_columns,
    headline=claims.headline,
    # After variance: the tour page lists experiments in this order, and the tour test renders its first 1,400 px.
    order=5,
)
