"""One process of a multi-process test (tests/distributed/); not a test module.

Usage: python worker.py SCENARIO RANK WORLD_SIZE STORE_FILE OUT_FILE [ARG]. The process joins a gloo group through
the file store, runs the scenario and saves what it returns with torch.save, for the test to judge against one
process. The data every scenario uses is defined here, once, so that the test builds the same batches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.utils.checkpoint as checkpoint

import bnlab

#: The equivalence cases: name → (shape of one sample without N, per-rank batch sizes for 2 and 3 processes).
SPLITS = {"uneven": {2: (3, 5), 3: (3, 5, 2)}, "empty": {2: (0, 4), 3: (0, 4, 2)}, "one-sample": {2: (1, 1), 3: (1, 1, 1)}}
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


def equivalence(rank: int, world: int, arg: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in bnlab.available_backends("cpu", torch.float64):
        for split in SPLITS:
            for shape in SAMPLE_SHAPES:
                for setting, (momentum, track, affine) in SETTINGS.items():
                    torch.manual_seed(0)
                    layer = bnlab.SyncBatchNorm(SAMPLE_SHAPES[shape][0], momentum=momentum,
                                                track_running_stats=track, affine=affine, dtype=torch.float64,
                                                backend=backend, timeout=30)
                    randomize(layer)
                    results[f"{backend}-{split}-{shape}-{setting}"] = train_steps(
                        layer, split, shape, world, rank, lambda t: dist.all_reduce(t))
    return results


def randomize(layer: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64))


SCENARIOS: dict[str, Callable[[int, int, str], dict[str, Any]]] = {"equivalence": equivalence}


def main() -> None:
    scenario, rank, world, store, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    arg = sys.argv[6] if len(sys.argv) > 6 else ""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(SCENARIOS[scenario](rank, world, arg), out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
