"""One process of the two-process recalibration tests (tests/tools/test_recalibrate.py); not a test module.

Usage: python distributed_worker.py RANK WORLD_SIZE STORE_FILE OUT_FILE [failures]. Each rank recalibrates the
same model on its own share of the data with gloo on CPU and saves what it got, for the test to compare with one
process. With ``failures``, rank 1's share holds a bad batch (a NaN; a batch of one sample) and each rank saves
the error it raised and whether its model was left as it was; a last, clean recalibration shows that the
processes' collectives are still in step afterwards.
"""

from __future__ import annotations

import gc
import json
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


def bad_share(rank: int, case: str) -> list[torch.Tensor]:
    """Rank 1's second batch (its samples 7 to 9) spoiled by ``case``; rank 0's share as it is."""
    batches = [b.clone() for b in share(rank)]
    if rank == 1 and case == "nan":
        batches[1][1, 0, 2, 2] = float("nan")
    elif rank == 1 and case == "one-sample":
        batches[1] = batches[1][:1, :, :1, :1]  # (1, 2, 1, 1): one value per channel at the first batch norm
    return batches


def failures(rank: int) -> dict[str, object]:
    results: dict[str, object] = {}
    for case, modes in (("nan", ("pooled", "paper", "cumulative")), ("one-sample", ("pooled",))):
        for mode in modes:
            m = model()
            before = {k: v.clone() for k, v in m.state_dict().items()}
            try:
                recalibrate(m, bad_share(rank, case), mode=mode)
                outcome = ["no error", ""]
            except Exception as error:  # what every rank raised, for the test to compare
                outcome = [type(error).__name__, str(error)]
            unchanged = all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
            results[f"{case}/{mode}"] = [*outcome, unchanged]
    report = recalibrate(model(), share(rank))
    results["afterwards"] = [report.batches, report.samples]
    return results


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        if sys.argv[5:] == ["failures"]:
            with open(out, "w") as f:
                json.dump(failures(rank), f)
            return
        results = {}
        for mode in ("pooled", "paper", "cumulative"):
            m = model()
            report = recalibrate(m, share(rank), mode=mode)
            results[mode] = {"state": m.state_dict(), "report": [report.layers, report.batches, report.samples]}
        torch.save(results, out)
    finally:
        gc.collect()  # before gloo's threads go: see bnlab.lab.distributed.teardown
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
