"""One process of the two-process recalibration test (tests/tools/test_recalibrate.py); not a test module.

Usage: python distributed_worker.py RANK WORLD_SIZE STORE_FILE OUT_FILE. Each rank recalibrates the same model
on its own share of the data with gloo on CPU and saves what it got, for the test to compare with one process.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from bnlab.tools import recalibrate


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.BatchNorm2d(3, momentum=None), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 5 * 5, 4), torch.nn.BatchNorm1d(4)).eval()


def data() -> list[torch.Tensor]:
    """All batches, uneven on purpose; rank 0 takes the first three, rank 1 the other two."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(29, 2, 5, 5, generator=gen) * 2 + 0.5
    return list(x.split([8, 8, 3, 7, 3]))


def share(rank: int) -> list[torch.Tensor]:
    batches = data()
    return batches[:3] if rank == 0 else batches[3:]


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for mode in ("pooled", "paper", "cumulative"):
            m = model()
            report = recalibrate(m, share(rank), mode=mode)
            results[mode] = {"state": m.state_dict(), "report": [report.layers, report.batches, report.samples]}
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
