"""The lab on several processes: ``bnlab run EXPERIMENT --nproc N``.

``bnlab run ... --nproc N`` starts N processes with PyTorch's own launcher (``torch.distributed.run``,
standalone: one machine, a free port) running the same command; each joins a process group (gloo on CPU, NCCL on
GPUs, one GPU per process), and the training loop (:func:`bnlab.lab.train.loop.train`) then

- converts the model's batch norm to :class:`bnlab.SyncBatchNorm` in place (the optimizer keeps its parameters)
  and wraps it in ``DistributedDataParallel``;
- gives each rank its share of every mini-batch (``torch.tensor_split``: shares differ by at most one sample);
- scales each rank's mean loss by its share of the batch, times the world size, so that DDP's average of the
  ranks' gradients is the gradient of the mean loss over the whole batch, and records that global mean loss.

With global batch-norm statistics the run computes what one process computes on the whole batch, up to
floating-point rounding. Only rank 0 writes the run's files; the other ranks write theirs into a temporary
folder that is removed. A failure on any rank makes the launcher end every rank; the rank writes why it failed
(:mod:`bnlab.lab.rank_failures`) and :func:`launch` returns it, so the command ends with one message.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bnlab.lab.rank_failures import FAILURES_ENV, NPROC_ENV, RankFailure, first_failure

__all__ = ["NPROC_ENV", "RUN_COPY_ENV", "Distributed", "Launched", "Shares", "current", "global_mean", "launch",
           "setup", "supervised_step", "teardown", "wrap"]

#: Set by ``bnlab resume`` of a ``--nproc`` run: a copy of the run folder, taken before any rank started, that
#: the ranks other than 0 resume in a copy of their own (only rank 0 writes the run's files).
RUN_COPY_ENV = "BNLAB_NPROC_RUN_COPY"

#: How long the launcher may take to end its ranks after a Ctrl-C before it is killed.
_INTERRUPT_GRACE_S = 60


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int


_current: Distributed | None = None


def current() -> Distributed | None:
    """This process's place in a ``--nproc`` run, or None in an ordinary one-process run."""
    return _current


@dataclass(frozen=True)
class Launched:
    """How a :func:`launch` ended: the launcher's exit code, the failure the first failing rank recorded (None on
    success, or when no rank recorded one), and everything written to stderr (the launcher's and the ranks')."""

    code: int
    failure: RankFailure | None
    stderr: str


def launch(nproc: int, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Launched:
    """Run ``bnlab ARGV`` on ``nproc`` processes with ``torch.distributed.run`` (``env`` added to each one's
    environment). Their stdout is this process's; stderr is collected, so that a failure is told once by the
    caller rather than by the launcher's multi-line report."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bnlab.cli", *argv]
    with tempfile.TemporaryDirectory(prefix="bnlab-nproc-") as folder:
        failures = Path(folder, "failures")
        failures.mkdir()
        child_env = {**os.environ, **(env or {}), NPROC_ENV: str(nproc), FAILURES_ENV: str(failures),
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(Path(folder, "stderr"), "w+b") as log:
            process = subprocess.Popen(command, env=child_env, stderr=log)
            try:
                code = process.wait()
            except BaseException:
                # Ctrl-C reaches the launcher too (same process group): give it the time to end its ranks, since
                # killing it at once would leave them running.
                try:
                    process.wait(timeout=_INTERRUPT_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise
            log.seek(0)
            text = log.read().decode(errors="replace")
        return Launched(code, first_failure(failures) if code else None, text)


def setup(device: torch.device) -> Distributed | None:
    """Join the process group when this process was started by :func:`launch` (else None)."""
    global _current
    if NPROC_ENV not in os.environ or "RANK" not in os.environ:
        return None
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _current = Distributed(dist.get_rank(), dist.get_world_size())
    return _current


def teardown() -> None:
    global _current
    if dist.is_initialized():
        # Free what the collectives still hold while gloo's threads are alive. A tensor released later by a gloo
        # thread during interpreter shutdown makes that thread take the GIL after finalization began; CPython then
        # ends it with pthread_exit, and the unwinding through gloo's noexcept run loop aborts the process
        # ("terminate called without an active exception") after its work is done (seen in two-process runs
        # with activation checkpointing: tests/distributed/worker.py).
        gc.collect()
        dist.destroy_process_group()
    _current = None


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with synchronized batch norm (converted in place), wrapped in DistributedDataParallel."""
    from bnlab.tools.convert import convert

    convert(model, to="sync", inplace=True)
    device = next(model.parameters()).device
    # Running statistics are equal on every rank by construction: no buffer broadcast before each forward.
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)


class Shares:
    """This rank's share of each batch of ``stream`` (``torch.tensor_split``), and in ``factor`` the number that
    turns the share's mean loss into its part of the global mean's gradient under DDP's averaging:
    world size × share / batch size."""

    def __init__(self, stream: Iterator[tuple[Tensor, ...]], where: Distributed) -> None:
        self.stream, self.where, self.factor = stream, where, 1.0

    def __iter__(self) -> Shares:
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        batch = next(self.stream)
        part = tuple(t.tensor_split(self.where.world)[self.where.rank] for t in batch)
        self.factor = self.where.world * part[0].shape[0] / batch[0].shape[0]
        return part


def supervised_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[[Tensor, Tensor], Tensor], shares: Shares) -> Any:
    """The classifier's step on this rank's share: the scaled loss, one update; records the global mean loss."""
    from bnlab.lab.train.loop import Stepper

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> dict[str, Tensor]:
        x, y = batch
        loss = loss_fn(model(x), y) * shares.factor
        stepper.optimize("model", model, optimizer, loss)
        return {"loss": global_mean(loss, shares.where)}
    return step


def global_mean(loss: Tensor, where: Distributed) -> Tensor:
    """The mean loss over the whole batch from the ranks' scaled losses (their sum / world size)."""
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total / where.world
