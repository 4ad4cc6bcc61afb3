"""``dcgan_modes`` (E5): seed 000's train()/eval() pitfall, measured on a small DCGAN.

A 28 × 28 DCGAN (Radford et al. 2015; the PyTorch example's protocol) trained with and without batch norm in the
generator, as seed 000 compares; then the same fixed z sampled in train mode, eval mode, eval mode after
:func:`bnlab.recalibrate` and train mode with a batch of one, each scored by a reference classifier the lab
trains once and caches; the batch-dependence test; both GANs' loss curves; and bnlab.doctor's findings on the
generator. :mod:`~.config` → :mod:`~.nets` → :mod:`~.train` (with :mod:`~.classifier`, :mod:`~.modes`,
:mod:`~.scores`) → :mod:`~.claims` → :mod:`~.plots`.
"""

from __future__ import annotations

from bnlab.lab.experiments.dcgan_modes import claims, plots, train
from bnlab.lab.experiments.dcgan_modes.config import DcganConfig, records, units
from bnlab.lab.registry import Experiment

__all__ = ["EXPERIMENT", "DcganConfig", "claims", "plots", "train"]


def _columns(config: DcganConfig) -> dict[str, str]:
    return {"data set": config.dataset, "steps": f"{config.steps:,}",
            "networks": f"G {config.g_width}, D {config.d_width}, batch {config.batch_size}"}


EXPERIMENT = Experiment(
    name="dcgan_modes",
    summary="E5: a DCGAN's samples in train mode, eval mode and after recalibration; batch dependence; seed 000",
    config_cls=DcganConfig,
    train=train.train,
    summarize=claims.summarize,
    plot=plots.plot,
    records=records,
    # The quick version (the tour's, about a minute on one core): MNIST-5k, whose reference classifier trains in
    # seconds (Fashion-MNIST's takes a minute, once); the generator with BN alone; G and D 4× narrower, batches of
    # 32 and 800 steps at 3× the paper's learning rate, the cheapest settings measured to give digit-like samples
    # (at 2·10⁻⁴ they were less so: IS 3.89 and FD 110 against 4.56 and 68.8); 500 samples per mode.
    # docs/experiments.md has the measurements.
    quick={"dataset": "mnist-5k", "generators": ["bn"], "steps": 800, "batch_size": 32, "g_width": 64,
           "d_width": 16, "lr": 6e-4, "loss_every": 20, "score_samples": 500, "recal_batches": 25,
           "doctor_batches": 4, "classifier_epochs": 10},
    smoke={"dataset": "synthetic", "steps": 12, "batch_size": 16, "g_width": 16, "d_width": 4, "loss_every": 4,
           "grid": 16, "sample_batch": 16, "score_samples": 40, "recal_batches": 2, "doctor_batches": 2,
           "classifier_epochs": 8},
    prepare=train.prepare,
    units=units,
    threads=1,
    columns=_columns,
    headline=claims.headline,
    order=7,
)
