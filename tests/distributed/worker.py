"""One process of a multi-process test (tests/distributed/); not a test module.

Usage: python worker.py SCENARIO RANK WORLD_SIZE STORE_FILE OUT_FILE [ARG]. The process joins a gloo group through
the file store, runs the scenario and saves what it returns with torch.save, for the test to judge against one
process. The data every scenario uses is defined here, once, so that the test builds the same batches.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.utils.checkpoint as checkpoint

import bnlab

#: The equivalence cases: name → (shape of one sample without N, per-rank batch sizes for 2 and 3 processes).
SPLITS = {"uneven": {2: (3, 5), 3: (3, 5, 2)}, "empty": {2: (0, 4), 3: (0, 4, 2)},
          "one-sample": {2: (1, 1), 3: (1, 1, 1)}}
SAMPLE_SHAPES = {"NC": (3,), "NCHW": (4, 3, 2)}
#: Layer settings each case runs with: (momentum, track_running_stats, affine).
SETTINGS = {"momentum": (0.1, True, True), "cumulative": (None, True, True), "no-running": (0.1, False, False)}
STEPS = 2
LEARNING_RATE = 0.5


def step_data(split: str, shape: str, world: int, step: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The global batch x and the loss weights g of one step (loss = Σ y·g), and the per-rank sizes."""
    sizes = list(SPLITS[split][world])
    gen = torch.Generator().manual_seed(100 * step + len(sizes))
    full = (sum(sizes), *SAMPLE_SHAPES[shape])
    x = torch.randn(full, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(full, generator=gen, dtype=torch.float64)
    return x, g, sizes


def train_steps(layer: torch.nn.Module, split: str, shape: str, world: int, rank: int | None,
                sync_grads: Callable[[torch.Tensor], None] | None = None) -> list[dict[str, Any]]:
    """STEPS steps of SGD on γ, β; rank None is one process on the whole batch. Returns each step's results."""
    out = []
    for step in range(STEPS):
        x, g, sizes = step_data(split, shape, world, step)
        if rank is not None:
            x, g = x.split(sizes)[rank], g.split(sizes)[rank]
        if shape == "NCHW" and rank is not None and rank % 2:
            x = x.contiguous(memory_format=torch.channels_last)  # layouts may differ between ranks
        x = x.clone().requires_grad_(True)
        y = layer(x)
        (y * g).sum().backward()
        grads = [p.grad.clone() for p in (layer.weight, layer.bias) if p is not None and p.grad is not None]
        for grad in grads:
            if sync_grads is not None:
                sync_grads(grad)  # what DDP does: the sum over ranks
        record = {"y": y.detach(), "dx": x.grad, "grads": grads, "state": {k: v.clone() for k, v in
                                                                            layer.state_dict().items()}}
        with torch.no_grad():
            for p, grad in zip([p for p in (layer.weight, layer.bias) if p is not None], grads, strict=False):
                p -= LEARNING_RATE * grad
                p.grad = None
        out.append(record)
    return out


def equivalence_cases() -> list[tuple[str, str, str, str]]:
    """Every backend that computes float64 here on every split and shape; the layer settings on the first one."""
    backends = bnlab.available_backends("cpu", torch.float64)
    return [(backend, split, shape, setting) for backend in backends for split in SPLITS for shape in SAMPLE_SHAPES
            for setting in SETTINGS if setting == "momentum" or backend == backends[0]]


def equivalence(rank: int, world: int, arg: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend, split, shape, setting in equivalence_cases():
        momentum, track, affine = SETTINGS[setting]
        torch.manual_seed(0)
        layer = bnlab.SyncBatchNorm(SAMPLE_SHAPES[shape][0], momentum=momentum, track_running_stats=track,
                                    affine=affine, dtype=torch.float64, backend=backend, timeout=30)
        randomize(layer)
        results[f"{backend}-{split}-{shape}-{setting}"] = train_steps(layer, split, shape, world, rank,
                                                                      lambda t: dist.all_reduce(t))
    return results


def randomize(layer: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64))


class CollectiveCounter:
    """Counts the all-gathers (SyncBatchNorm's one collective) made while it is installed."""

    def __init__(self) -> None:
        self.calls = 0
        self._original = dist.all_gather_single

    def __enter__(self) -> CollectiveCounter:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self._original(*args, **kwargs)
        dist.all_gather_single = counted
        return self

    def __exit__(self, *exc: object) -> None:
        dist.all_gather_single = self._original


def checkpoint_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=torch.float64),
                               bnlab.SyncBatchNorm(3, dtype=torch.float64, timeout=30), torch.nn.Tanh())


def checkpoint_batch(step: int, rank: int | None) -> torch.Tensor:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    return x if rank is None else x.split([3, 5])[rank]


def checkpointed(rank: int, world: int, arg: str) -> dict[str, Any]:
    """Two steps through torch.utils.checkpoint (arg: "reentrant" or "non-reentrant"), counting collectives."""
    model = checkpoint_model()
    calls, grads = [], []
    for step in range(STEPS):
        x = checkpoint_batch(step, rank).requires_grad_(True)
        with CollectiveCounter() as forward:
            y = checkpoint.checkpoint(model, x, use_reentrant=arg == "reentrant")
        with CollectiveCounter() as backward:
            y.square().sum().backward()
        calls.append((forward.calls, backward.calls))
        grads.append(x.grad)
    return {"calls": calls, "state": model.state_dict(), "dx": grads,
            "weight_grad": [p.grad for p in model.parameters()]}


def counts(rank: int, world: int, arg: str) -> dict[str, Any]:
    """Collectives per pass: training steps, eval, and a layer outside a subgroup (world 3, group of ranks 0, 1)."""
    group = dist.new_group([0, 1])
    layer = bnlab.SyncBatchNorm(3, process_group=group, dtype=torch.float64, timeout=30)
    randomize(layer)
    result: dict[str, Any] = {"train": []}
    for step in range(STEPS):
        x, _, sizes = step_data("uneven", "NCHW", world, step)
        x = x[:, :3].contiguous()
        part = x.split(sizes)[rank].clone().requires_grad_(True)
        with CollectiveCounter() as forward:
            y = layer(part)
        with CollectiveCounter() as backward:
            y.sum().backward()
        result["train"].append((forward.calls, backward.calls))
        result[f"y{step}"] = y.detach()
    layer.eval()
    with CollectiveCounter() as evaluation:
        layer(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    result["eval"] = evaluation.calls
    result["state"] = layer.state_dict()
    return result


def disagreement(rank: int, world: int, arg: str) -> dict[str, Any]:
    """Rank 1 disagrees (arg: "skip", "eval" or "channels"); every rank returns the error it got, if any."""
    channels = 4 if arg == "channels" and rank == 1 else 3
    first = bnlab.SyncBatchNorm(channels, timeout=2)
    second = bnlab.SyncBatchNorm(3, timeout=2)
    start = time.monotonic()
    try:
        if arg == "eval":  # rank 1 evaluates the layer the others train, and so never joins their exchange
            first.train(rank != 1)(torch.randn(4, channels, 2))
        else:
            for step in range(STEPS):
                x = torch.randn(4, channels, 2)
                if not (arg == "skip" and rank == 1 and step == 1):
                    x = first(x)
                second(x[:, :3]).sum().backward()
    except bnlab.nn.SyncBatchNormError as error:
        return {"error": str(error), "seconds": time.monotonic() - start}
    if arg == "eval":
        time.sleep(4)  # stay in the group, as a rank that went on training would, until the others gave up
    return {"error": None, "seconds": time.monotonic() - start}


def edges(rank: int, world: int, arg: str) -> dict[str, Any]:
    """One value per channel in the whole group (an error on every rank), then bfloat16 channels_last input."""
    result: dict[str, Any] = {}
    try:
        bnlab.SyncBatchNorm(3, timeout=30)(torch.randn(1 if rank == 0 else 0, 3))
        result["error"] = None
    except ValueError as error:
        result["error"] = str(error)
    layer = bnlab.SyncBatchNorm(4, timeout=30)
    x, _, sizes = step_data("uneven", "NCHW", world, 0)
    part = x.split(sizes)[rank].to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = layer(part.requires_grad_(True))
    y.float().square().sum().backward()
    result.update(y=y.detach(), channels_last=y.is_contiguous(memory_format=torch.channels_last),
                  dx=part.grad, state=layer.state_dict())
    return result


SCENARIOS: dict[str, Callable[[int, int, str], dict[str, Any]]] = {
    "edges": edges,
    "equivalence": equivalence, "checkpoint": checkpointed, "counts": counts, "disagreement": disagreement}


def main() -> None:
    scenario, rank, world, store, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    arg = sys.argv[6] if len(sys.argv) > 6 else ""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(SCENARIOS[scenario](rank, world, arg), out)
    finally:
        # Free what the collectives still hold while gloo's threads are alive: a tensor released later, by a
        # gloo thread during interpreter shutdown, makes that thread take the GIL after finalization began;
        # CPython then ends the thread with pthread_exit, whose unwinding through gloo's noexcept run loop calls
        # std::terminate ("terminate called without an active exception", SIGABRT after the results were
        # written: seen in 1 of 10 to 4 of 12 two-process checkpoint runs).
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
