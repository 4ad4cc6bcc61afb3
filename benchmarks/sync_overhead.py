"""The cost of synchronization: SyncBatchNorm on 2 gloo processes against plain batch norm on the same batch.

    python -m benchmarks.sync_overhead [--reps 15] [--world 2] [--threads 1] [--json out.json]

Each process holds the same per-rank batch shape and times a training forward + backward of
``bnlab.SyncBatchNorm`` (statistics over both processes: one all-gather forward, one backward) and of
``bnlab.BatchNorm*d`` (its own statistics only), interleaved, medians over the repetitions. The ratio
sync / plain, per shape, is the price of global statistics on this machine. On a shared machine the
numbers move with the other load: quote them with that caveat. No GPU here: the NCCL comparison with torch's
SyncBatchNorm is not measured by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnlab

SHAPES = [(256, 512), (64, 256, 8, 8), (16, 64, 28, 28)]


def _plain(shape: tuple[int, ...]) -> torch.nn.Module:
    return bnlab.BatchNorm1d(shape[1]) if len(shape) == 2 else bnlab.BatchNorm2d(shape[1])


def _time(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> float:
    start = time.perf_counter()
    x.grad = None
    layer(x).backward(g)
    return (time.perf_counter() - start) * 1e3


def _rank(rank: int, world: int, store: str, reps: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rows = []
    try:
        for shape in SHAPES:
            gen = torch.Generator().manual_seed(rank)
            x = torch.randn(shape, generator=gen).requires_grad_(True)
            g = torch.randn(shape, generator=gen)
            layers = {"sync": bnlab.SyncBatchNorm(shape[1]), "plain": _plain(shape)}
            times: dict[str, list[float]] = {name: [] for name in layers}
            for _ in range(2):  # warm-up (and the sync layer's handshake)
                for layer in layers.values():
                    _time(layer, x, g)
            for _ in range(reps):
                for name, layer in layers.items():
                    dist.barrier()  # both ranks start each measurement together
                    times[name].append(_time(layer, x, g))
            sync, plain = statistics.median(times["sync"]), statistics.median(times["plain"])
            rows.append({"shape": list(shape), "sync_ms": round(sync, 4), "plain_ms": round(plain, 4),
                         "ratio": round(sync / plain, 3)})
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        store, out = os.path.join(folder, "store"), os.path.join(folder, "rows.json")
        mp.spawn(_rank, args=(args.world, store, args.reps, args.threads, out), nprocs=args.world, join=True)
        rows = json.loads(Path(out).read_text())
    result: dict[str, Any] = {
        "what": f"SyncBatchNorm on {args.world} gloo processes / plain batch norm, training forward + backward, "
                f"the same per-rank batch; medians of {args.reps}",
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                        "note": "a shared machine: other processes' load moves these numbers"},
        "rows": rows,
    }
    for row in rows:
        print(f"{tuple(row['shape'])!s:20s} sync {row['sync_ms']:8.3f} ms  plain {row['plain_ms']:8.3f} ms  "
              f"ratio {row['ratio']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
