"""Training for the lab's experiments: the step protocol and loop (:mod:`~bnlab.lab.train.loop`), mini-batches
and the non-finite data check (:mod:`~bnlab.lab.train.batches`), optimizers by name
(:mod:`~bnlab.lab.train.optim`), probes (:mod:`~bnlab.lab.train.probes`) and the probes that evaluate the network at
moved weights: the landscape along the gradient and internal covariate shift (:mod:`~bnlab.lab.train.landscape`)."""

from bnlab.lab.train.batches import NonFiniteDataError, batches, check_finite
from bnlab.lab.train.landscape import CovariateShiftProbe, LandscapeProbe, loss_and_gradients
from bnlab.lab.train.loop import Hook, OptimizerStep, StepFn, Stepper, TrainResult, run_steps, supervised_step, train
from bnlab.lab.train.optim import OPTIMIZERS, make_optimizer
from bnlab.lab.train.probes import ActivationProbe, GradientProbe, LossAlongDirection, probe_pass

__all__ = ["OPTIMIZERS", "ActivationProbe", "CovariateShiftProbe", "GradientProbe", "Hook", "LandscapeProbe",
           "LossAlongDirection", "NonFiniteDataError", "OptimizerStep", "StepFn", "Stepper", "TrainResult", "batches",
           "check_finite", "loss_and_gradients", "make_optimizer", "probe_pass", "run_steps", "supervised_step",
           "train"]
