"""Training for the lab's experiments: the step protocol and loop (:mod:`~bnlab.lab.train.loop`), mini-batches
and the non-finite data check (:mod:`~bnlab.lab.train.batches`), optimizers by name
(:mod:`~bnlab.lab.train.optim`) and probes (:mod:`~bnlab.lab.train.probes`)."""

from bnlab.lab.train.batches import NonFiniteDataError, batches, check_finite
from bnlab.lab.train.loop import Hook, OptimizerStep, StepFn, Stepper, TrainResult, run_steps, supervised_step, train
from bnlab.lab.train.optim import OPTIMIZERS, make_optimizer
from bnlab.lab.train.probes import ActivationProbe, GradientProbe, LossAlongDirection

__all__ = ["OPTIMIZERS", "ActivationProbe", "GradientProbe", "Hook", "LossAlongDirection", "NonFiniteDataError",
           "OptimizerStep", "StepFn", "Stepper", "TrainResult", "batches", "check_finite", "make_optimizer",
           "run_steps", "supervised_step", "train"]
