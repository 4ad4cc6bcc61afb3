"""Calibrate Figure 1's defaults (init scale, learning rate, pixel scaling) over 3 seeds, as docs/experiments.md
records.

The rule, fixed before looking at any result: take the grid point with the best 3-seed mean final test accuracy
of the network WITHOUT batch norm (the fairest setting for the baseline). The BN network is not trained here, so
it cannot influence the choice. Each grid point writes one JSON line, so an interrupted calibration keeps what it
measured and a second process can take another part of the grid; a point counts as measured only for the same
data set and step count.

    python scripts/calibrate_fig1.py --out calib.jsonl [--pixels unit] [--steps 5000]
    python scripts/calibrate_fig1.py --table calib.jsonl    # the Markdown table for docs/experiments.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from bnlab.lab import engine
from bnlab.lab.config import apply_overrides
from bnlab.lab.experiments import fig1
from bnlab.lab.experiments.fig1_claims import curves
from bnlab.lab.registry import RunContext

LRS = (0.1, 0.3, 1.0, 3.0)
INIT_STDS = (0.01, 0.1)
PIXELS = ("unit", "centered", "standardized")


def grid_key(row: dict[str, object]) -> tuple[object, ...]:
    """What identifies a grid point's measurement: a resumed calibration skips only points with the same key."""
    return row["dataset"], row["steps"], row["pixels"], row["init_std"], row["lr"]


def measured(out: Path) -> set[tuple[object, ...]]:
    """The keys of the grid points already in ``out`` (none when it does not exist)."""
    if not out.exists():
        return set()
    return {grid_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}


def calibrate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = measured(out)
    cache: dict[str, object] = {}
    for pixels, init_std, lr in itertools.product(args.pixels, INIT_STDS, LRS):
        point = {"dataset": args.dataset, "steps": args.steps, "pixels": pixels, "init_std": init_std, "lr": lr}
        if grid_key(point) in done:
            continue
        config = apply_overrides(fig1.Fig1Config(), {"dataset": args.dataset, "steps": args.steps,
                                                     "eval_every": 1000, "lr": lr, "init_std": init_std,
                                                     "pixels": pixels})
        records: list[dict[str, object]] = []
        start = time.perf_counter()
        for seed in args.seeds:
            engine.seed_everything(seed)
            fig1.train(config, RunContext(seed=seed, device=torch.device("cpu"), log=records.append, cache=cache,
                                          progress=False), models=("baseline",))
        s = baseline_summary(records)
        row = {"pixels": pixels, "init_std": init_std, "lr": lr, "dataset": args.dataset, "steps": args.steps,
               "seeds": args.seeds, **s, "seconds": round(time.perf_counter() - start, 1)}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(pixels, init_std, lr, s["final_accuracy"], flush=True)


def baseline_summary(records: list[dict[str, object]]) -> dict[str, object]:
    """Mean and spread over seeds of the baseline's final accuracy, and its accuracy after 1,000 and 2,000 steps."""
    c = curves(records)["baseline"]
    final = c.accuracy[:, -1]
    at = {str(s): float(c.accuracy[:, int(np.searchsorted(c.steps, s))].mean()) for s in (1000, 2000)}
    diverged = [r["seed"] for r in records if r.get("kind") == "end" and r["diverged"]]
    return {"final_accuracy": float(final.mean()), "final_accuracy_spread": float(final.std(ddof=1)),
            "accuracy_at": at, "diverged": diverged}


def table(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    best = max(rows, key=lambda r: r["final_accuracy"])
    print("| pixels | init_std | lr | baseline final accuracy (%) | after 1,000 | after 2,000 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["pixels"], r["init_std"], r["lr"])):
        mark = " **chosen**" if r is best else ""
        diverged = f" (diverged: seeds {r['diverged']})" if r["diverged"] else ""
        print(f"| {r['pixels']} | {r['init_std']} | {r['lr']}{mark} | {100 * r['final_accuracy']:.2f} ± "
              f"{100 * r['final_accuracy_spread']:.2f}{diverged} | {100 * r['accuracy_at']['1000']:.2f} | "
              f"{100 * r['accuracy_at']['2000']:.2f} | {r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="calibration-fig1.jsonl")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pixels", nargs="+", default=list(PIXELS), choices=PIXELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", metavar="JSONL", help="print the Markdown table of a finished calibration")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    torch.set_num_threads(args.threads)
    calibrate(args)


if __name__ == "__main__":
    main()
