"""Calibrate Figure 1's defaults (init scale, learning rate, pixel scaling) over 3 seeds: a lab sweep.

The rule, fixed before looking at any result: take the grid point with the best 3-seed mean final test accuracy
of the network WITHOUT batch norm (the fairest setting for the baseline). The BN network is not trained here
(``models=baseline``), so it cannot influence the choice. The calibration is an ordinary resumable run of the lab,
``bnlab run fig1 --set models=baseline --grid pixels=... --grid init_std=... --grid lr=...``: an interrupted one
continues with ``bnlab resume RUN_DIR``, and its report has the table of the points.

    python scripts/calibrate_fig1.py [--out runs] [--pixels unit] [--steps 5000]   # prints the run folder
    bnlab resume runs/fig1/20261122-101010                                          # after an interruption
    python scripts/calibrate_fig1.py --table runs/fig1/20261122-101010   # the Markdown table for docs/experiments.md
    python scripts/calibrate_fig1.py --table docs/calibration-fig1.jsonl  # the recorded calibration's table
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from bnlab.lab.experiments import fig1
from bnlab.lab.records import METRICS, RESULT, read_json, read_metrics
from bnlab.lab.result import Result
from bnlab.lab.runner import make_config, run_experiment

LRS = (0.1, 0.3, 1.0, 3.0)
INIT_STDS = (0.01, 0.1)
PIXELS = ("unit", "centered", "standardized")


def grid(pixels: tuple[str, ...] = PIXELS) -> list[dict[str, Any]]:
    """The sweep's points: pixels × init_std × lr, in that order."""
    return [{"pixels": p, "init_std": s, "lr": lr} for p, s, lr in itertools.product(pixels, INIT_STDS, LRS)]


def calibrate(out: Path, dataset: str, steps: int, seeds: list[int], pixels: tuple[str, ...],
              threads: int | None = None) -> Path:
    """Run the calibration sweep (the baseline alone, evaluated every 1,000 steps); returns its run folder."""
    config = make_config(fig1.EXPERIMENT, overrides={"dataset": dataset, "steps": steps, "eval_every": 1000,
                                                     "models": ["baseline"]})
    return run_experiment(fig1.EXPERIMENT, config, out_root=out, seeds=seeds, grid=grid(pixels), device="cpu",
                          threads=threads, command="python scripts/calibrate_fig1.py")


def rows_of_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per point of a calibration run: its settings, the baseline's accuracies and the wall time."""
    result = Result.from_json(read_json(run_dir / RESULT))
    seconds: dict[int, float] = {}
    for r in read_metrics(run_dir / METRICS):
        if r.get("kind") == "unit_done":
            seconds[r["point"]] = seconds.get(r["point"], 0.0) + r["seconds"]
    rows = []
    for i, point in enumerate(result.points):
        s = point.result.summary
        if "final_accuracy" not in s:
            continue  # a point that did not finish
        rows.append({**point.settings, "final_accuracy": s["final_accuracy"]["baseline"],
                     "final_accuracy_spread": s["final_accuracy_spread"]["baseline"] or 0.0,
                     "accuracy_at": {k: v["baseline"] for k, v in s["accuracy_at"].items()},
                     "diverged": s["diverged"], "seconds": seconds.get(i, 0.0)})
    return rows


def rows_of_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a calibration recorded before it was a lab sweep (docs/calibration-fig1.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of a calibration, the chosen point (best mean final accuracy) marked."""
    best = max(rows, key=lambda r: r["final_accuracy"])
    lines = ["| pixels | init_std | lr | baseline final accuracy (%) | after 1,000 | after 2,000 | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["pixels"], r["init_std"], r["lr"])):
        mark = " **chosen**" if r is best else ""
        diverged = f" (diverged: {r['diverged']})" if r["diverged"] else ""
        at = {k: (f"{100 * v:.2f}" if v is not None else "—") for k, v in r["accuracy_at"].items()}
        lines.append(f"| {r['pixels']} | {r['init_std']} | {r['lr']}{mark} | {100 * r['final_accuracy']:.2f} ± "
                     f"{100 * r['final_accuracy_spread']:.2f}{diverged} | {at.get('1000', '—')} | "
                     f"{at.get('2000', '—')} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="the runs folder")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pixels", nargs="+", default=list(PIXELS), choices=PIXELS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table", type=Path, metavar="RUN_DIR|JSONL",
                        help="print the Markdown table of a calibration run (or of a recorded .jsonl)")
    args = parser.parse_args()
    if args.table:
        print(table(rows_of_jsonl(args.table) if args.table.suffix == ".jsonl" else rows_of_run(args.table)))
        return
    run_dir = calibrate(args.out, args.dataset, args.steps, args.seeds, tuple(args.pixels), args.threads)
    print(f"calibration: {run_dir}\n")
    print(table(rows_of_run(run_dir)))


if __name__ == "__main__":
    main()
