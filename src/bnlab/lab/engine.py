"""The training engine: a small, readable loop over plain PyTorch.

Per step it does what a hand-written loop does (take the next slice of a per-epoch permutation, forward, loss,
backward, optimizer step) plus one in-place add that accumulates the loss on the device; nothing in the loop
reads a value back to the host, so a GPU is never made to wait. Evaluation, the host read of the mean training
loss, the divergence check and the progress bar happen only at the evaluation steps the caller chose.
The engine's cost over a bare loop is measured by ``python -m benchmarks.engine_overhead``.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "TrainResult", "batches", "make_optimizer", "resolve_device", "seed_everything", "train"]

OPTIMIZERS = ("sgd", "momentum", "adam")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is a GPU, else CPU), ``"cpu"`` or ``"cuda"``; ValueError if it cannot run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu or auto")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch's generators (CPU and every GPU) and switch deterministic algorithms on or off."""
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; it must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def make_optimizer(params: Any, name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"sgd"`` (plain, fixed ``lr``), ``"momentum"`` (SGD with ``momentum``) or ``"adam"`` (torch defaults)."""
    if not lr > 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless mini-batches: each epoch a fresh permutation, cut into contiguous slices (the last partial one dropped).

    Permuting once per epoch costs one gather per epoch; the slices are views, so a step pays no indexing.
    """
    n = x.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch size {batch_size} must be between 1 and the number of training examples ({n})")
    while True:
        order = torch.randperm(n, generator=generator).to(x.device)
        xs, ys = x[order], y[order]
        for start in range(0, n - batch_size + 1, batch_size):
            yield xs[start:start + batch_size], ys[start:start + batch_size]


@dataclass(frozen=True)
class TrainResult:
    """How a call to :func:`train` ended: steps taken, whether the loss stopped being finite, wall time."""

    steps: int
    diverged: bool
    seconds: float


def train(model: torch.nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, *, steps: int,
          batch_size: int, seed: int, eval_steps: Sequence[int] = (),
          evaluate: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
          on_eval: Callable[[dict[str, Any]], None] | None = None,
          loss_fn: Callable[[Tensor, Tensor], Tensor] = torch.nn.functional.cross_entropy,
          progress: bool | None = None, desc: str = "") -> TrainResult:
    """Train ``model`` for ``steps`` mini-batch steps on (``x``, ``y``), already on the model's device.

    Args:
        eval_steps: the steps after which to evaluate (0 = before the first step); others are ignored.
        evaluate: called in eval mode under ``torch.no_grad()`` at each evaluation step; returns the values to
            record (e.g. test accuracy). The model goes back to train mode afterwards.
        on_eval: receives ``{"step", "train_loss", **evaluate(model)}`` at each evaluation step, where
            ``train_loss`` is the mean loss of the steps since the previous evaluation (None at step 0).
        seed: seeds the generator of the batch order (the model's initial weights are the caller's business).
        progress: show a tqdm bar; None (default) shows it only when stderr is a terminal.

    Training stops early, with ``diverged=True``, when the mean loss at an evaluation is not finite.
    """
    wanted = {s for s in eval_steps if 0 <= s <= steps}
    generator = torch.Generator().manual_seed(seed)
    stream = batches(x, y, batch_size, generator)
    loss_sum = torch.zeros((), device=x.device)
    bar = _progress_bar(steps, desc, progress)
    # The loop pauses at evaluation steps, and every 100 steps to move the bar when there is one.
    ticks = set(range(100, steps, 100)) if bar is not None else set()
    stops = sorted(wanted | ticks | {steps})
    start, done, last_eval = time.perf_counter(), 0, 0
    try:
        model.train()
        for stop in stops:
            for xb, yb in itertools.islice(stream, stop - done):
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum.add_(loss.detach())
            if bar is not None:
                bar.update(stop - done)
            done = stop
            if stop not in wanted:
                continue
            mean_loss = loss_sum.item() / (stop - last_eval) if stop > last_eval else None
            loss_sum.zero_()
            last_eval = stop
            record: dict[str, Any] = {"step": stop, "train_loss": mean_loss}
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    record.update(evaluate(model))
                model.train()
            if on_eval is not None:
                on_eval(record)
            if mean_loss is not None and not math.isfinite(mean_loss):
                return TrainResult(stop, True, time.perf_counter() - start)
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(steps, False, time.perf_counter() - start)


def _progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=0.5)
