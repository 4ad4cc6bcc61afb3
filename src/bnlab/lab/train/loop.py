"""The training loop: a step protocol for any number of models and optimizers, with hooks around each update.

An experiment writes one **step function**, ``step(batch, stepper) -> {"loss": tensor, ...}``, that computes its
losses from a mini-batch and updates its models through ``stepper.optimize(name, model, optimizer, loss)``: a
classifier calls it once (:func:`supervised_step`), a GAN twice (``"discriminator"``, then ``"generator"``).
``optimize`` zeroes the gradients, back-propagates, calls every hook's ``before_step`` (the gradients are there,
the weights not yet moved: probes of gradients, of the loss along the gradient), steps the optimizer, then calls
``after_step``. Each hook's ``start_step`` runs before the step function (to switch an activation probe on for
the steps it samples).

:func:`run_steps` drives it: per step it takes the next batch, calls the step function and adds each returned
loss to a sum kept on the device; nothing in the loop reads a value back to the host, so a GPU is never made to
wait. Evaluation, the host read of the mean losses, the divergence check and the progress bar happen only at the
evaluation steps the caller chose (and every 100 steps for the bar). :func:`train` is the one-model classifier
case; its cost over a hand-written loop is measured by ``python -m benchmarks.engine_overhead``.
"""

from __future__ import annotations

import bisect
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from bnlab.lab import distributed
from bnlab.lab.train.batches import batches, check_finite

__all__ = ["Hook", "OptimizerStep", "StepFn", "Stepper", "TrainResult", "run_steps", "supervised_step", "train"]


@dataclass(frozen=True)
class OptimizerStep:
    """What a hook sees around one optimizer update: which one (``name``), at which step (from 1), the model,
    its optimizer, the loss whose gradients are in ``.grad``, and the batch."""

    name: str
    step: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Tensor
    batch: tuple[Tensor, ...]


class Hook:
    """Called by the loop around each step and each optimizer update; override what you need."""

    def start_step(self, step: int) -> None:
        """Before the step function runs for step ``step`` (from 1)."""

    def before_step(self, event: OptimizerStep) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: gradients present, weights unchanged."""

    def after_step(self, event: OptimizerStep) -> None:
        """After ``optimizer.step()``."""


class Stepper:
    """Given to the step function: the step number and :meth:`optimize`, which runs the hooks."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)
        self.step = 0
        self.batch: tuple[Tensor, ...] = ()

    def optimize(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        """Zero ``optimizer``'s gradients, back-propagate ``loss``, run the hooks' ``before_step``, step, run
        their ``after_step``."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not self.hooks:
            optimizer.step()
            return
        event = OptimizerStep(name, self.step, model, optimizer, loss, self.batch)
        for hook in self.hooks:
            hook.before_step(event)
        optimizer.step()
        for hook in self.hooks:
            hook.after_step(event)


class StepFn(Protocol):
    def __call__(self, batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        """One training step on ``batch``; returns the step's losses (0-dim tensors on the device)."""
        ...


def supervised_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] = torch.nn.functional.cross_entropy,
                    name: str = "model") -> StepFn:
    """The classifier's step: ``loss_fn(model(x), y)``, one update; returns ``{"loss": loss}``."""
    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        x, y = batch
        loss = loss_fn(model(x), y)
        stepper.optimize(name, model, optimizer, loss)
        return {"loss": loss.detach()}
    return step


@dataclass(frozen=True)
class TrainResult:
    """How training ended: steps taken, whether a mean loss stopped being finite, wall time."""

    steps: int
    diverged: bool
    seconds: float


def run_steps(step_fn: StepFn, stream: Iterator[tuple[Tensor, ...]], *, steps: int,
              models: Iterable[torch.nn.Module], eval_steps: Sequence[int] = (),
              evaluate: Callable[[], dict[str, Any]] | None = None,
              on_eval: Callable[[dict[str, Any]], None] | None = None, hooks: Sequence[Hook] = (),
              progress: bool | None = None, desc: str = "") -> TrainResult:
    """Run ``steps`` steps of ``step_fn`` over the batches of ``stream`` (endless, as :func:`batches` makes them).

    Args:
        models: put in train mode for the steps and in eval mode (under ``torch.no_grad()``) for ``evaluate``.
        eval_steps: the steps after which to evaluate (0 = before the first step); others are ignored.
        evaluate: returns the values to record at an evaluation step (e.g. test accuracy).
        on_eval: receives ``{"step", "train_<loss>": mean since the previous evaluation (None at step 0),
            **evaluate()}`` at each evaluation step (``train_loss`` for a step function's ``"loss"``).
        hooks: called around each step and each optimizer update (:class:`Hook`).
        progress: show a tqdm bar; None (default) shows it only when stderr is a terminal.

    Training stops early, with ``diverged=True``, when a mean loss at an evaluation is not finite.
    """
    models = list(models)
    wanted = sorted({s for s in eval_steps if 0 <= s <= steps})
    stepper = Stepper(hooks)
    sums: dict[str, Tensor] = {}
    bar = _progress_bar(steps, desc, progress)
    start, done, last_eval = time.perf_counter(), 0, 0

    def record_eval(at: int) -> bool:
        """Evaluate at step ``at``; True when a mean loss is not finite (diverged)."""
        nonlocal last_eval
        record: dict[str, Any] = {"step": at}
        means = {f"train_{k}": (v.item() / (at - last_eval) if at > last_eval else None) for k, v in sums.items()}
        record.update(means if sums else {"train_loss": None})
        for total in sums.values():
            total.zero_()
        last_eval = at
        if evaluate is not None:
            for m in models:
                m.eval()
            with torch.no_grad():
                record.update(evaluate())
            for m in models:
                m.train()
        if on_eval is not None:
            on_eval(record)
        return any(v is not None and not math.isfinite(v) for v in means.values())

    try:
        for m in models:
            m.train()
        if wanted and wanted[0] == 0:
            record_eval(0)
        while done < steps:
            # Pause at the next evaluation step, and every 100 steps to move the bar when there is one.
            i = bisect.bisect_right(wanted, done)
            stop = min(wanted[i] if i < len(wanted) else steps, steps)
            if bar is not None:
                stop = min(stop, (done // 100 + 1) * 100)
            for step in range(done + 1, stop + 1):
                batch = next(stream)
                stepper.step, stepper.batch = step, batch
                for hook in hooks:
                    hook.start_step(step)
                for key, loss in step_fn(batch, stepper).items():
                    total = sums.get(key)
                    if total is None:
                        sums[key] = loss.detach().clone()
                    else:
                        total.add_(loss.detach())
            if bar is not None:
                bar.update(stop - done)
            done = stop
            if (i < len(wanted) and wanted[i] == stop) and record_eval(stop):
                return TrainResult(stop, True, time.perf_counter() - start)
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(steps, False, time.perf_counter() - start)


def train(model: torch.nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, *, steps: int,
          batch_size: int, seed: int, eval_steps: Sequence[int] = (),
          evaluate: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
          on_eval: Callable[[dict[str, Any]], None] | None = None,
          loss_fn: Callable[[Tensor, Tensor], Tensor] = torch.nn.functional.cross_entropy,
          hooks: Sequence[Hook] = (), data_name: str = "the training data", progress: bool | None = None,
          desc: str = "") -> TrainResult:
    """Train the classifier ``model`` for ``steps`` mini-batch steps on (``x``, ``y``), already on its device.

    ``x`` is checked once for NaN and infinite values first (:class:`~bnlab.lab.train.batches.NonFiniteDataError`
    names ``data_name`` and the first bad example). ``seed`` seeds the batch order (the model's initial weights
    are the caller's business). The other arguments are :func:`run_steps`'s; ``evaluate`` receives the model.
    """
    check_finite(x, data_name)
    stream = batches((x, y), batch_size, torch.Generator().manual_seed(seed))
    step_fn = supervised_step(model, optimizer, loss_fn)
    where = distributed.current()
    if where is not None:  # bnlab run --nproc: this rank's share of each batch, through DDP and SyncBatchNorm
        shares = distributed.Shares(stream, where)
        stream, step_fn = shares, distributed.supervised_step(distributed.wrap(model), optimizer, loss_fn, shares)
    return run_steps(step_fn, stream, steps=steps, models=[model],
                     eval_steps=eval_steps, evaluate=None if evaluate is None else (lambda: evaluate(model)),
                     on_eval=on_eval, hooks=hooks, progress=progress, desc=desc)


def _progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=0.5)
