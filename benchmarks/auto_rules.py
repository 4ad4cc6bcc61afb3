"""``auto``'s rules for the cpu backend, derived from a benchmark run: ``python -m benchmarks.auto_rules [--check]``.

Reads ``benchmarks/results/cpu-full.json`` (both layouts, float32 and bfloat16, fused rows) and writes
``src/bnlab/kernels/cpu/auto_rules.py``: for every (dtype, call, layout) measured, the smallest number of
elements from which the ``cpu`` backend was faster than ``native`` (ATen through the same bnlab layer, timed in the
same run, repetitions interleaved) on every measured shape of that size and larger, or None where it was not
(``auto`` then stays on ``native``). ``--check`` only compares and exits 1 when the committed module differs (the
test suite runs the same comparison).

The rule compares ``cpu`` with ``native``, not with PyTorch's module: ``auto`` chooses between bnlab's backends,
and both pay bnlab's per-call Python. Calls: ``train`` is forward + backward of a plain layer, ``eval`` its eval
forward, ``fused_train`` and ``fused_eval`` the same for BN + add + ReLU (the catalogue's fused case, standing for
every residual or activation call).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cpu-full.json"
MODULE = ROOT / "src" / "bnlab" / "kernels" / "cpu" / "auto_rules.py"
# cpu must beat native by this factor to count as faster: a median difference below 2% is within what two
# interleaved runs of the same kernel differ by on this machine.
MARGIN = 1.02
CALLS = {("bn", "fwd+bwd"): "train", ("bn", "eval"): "eval", ("bn+add+relu", "fwd+bwd"): "fused_train",
          ("bn+add+relu", "eval"): "fused_eval"}


def derive(result: dict[str, Any]) -> dict[tuple[str, str, str], int | None]:
    """(dtype, call, layout) -> smallest numel from which cpu beat native on every measured shape, or None."""
    times: dict[tuple[str, str, str], dict[tuple[int, ...], dict[str, float]]] = {}
    for row in result["rows"]:
        call = CALLS.get((row["kind"], row["op"]))
        if call is None or row["backend"] not in ("cpu", "native"):
            continue
        key = (row["dtype"], call, row["layout"])
        times.setdefault(key, {}).setdefault(tuple(row["shape"]), {})[row["backend"]] = row["ours_ms"]
    rules: dict[tuple[str, str, str], int | None] = {}
    for key, shapes in sorted(times.items()):
        worst_at: dict[int, float] = {}  # numel -> the smallest speed-up of the shapes of that size
        for shape, t in shapes.items():
            if "cpu" in t and "native" in t:
                numel = math.prod(shape)
                worst_at[numel] = min(worst_at.get(numel, math.inf), t["native"] / t["cpu"])
        threshold: int | None = None
        for numel in sorted(worst_at, reverse=True):  # from the largest size down, while cpu keeps winning
            if worst_at[numel] < MARGIN:
                break
            threshold = numel
        rules[key] = threshold
    return rules


def render(rules: dict[tuple[str, str, str], int | None], result: dict[str, Any], source: str) -> str:
    env = result["environment"]
    lines = [
        '"""Where ``backend="auto"`` runs the cpu backend: measured, not guessed. GENERATED, do not edit.',
        "",
        "Written by ``python -m benchmarks.auto_rules`` (``make bench`` runs it after the benchmark) from",
        f"``{source}``:",
        f"{env.get('cpu')}, {env['threads']} threads, torch {env['torch']}, git {env.get('git') or '?'},",
        f"{env['date']}, load average {_load(env)}.",
        "Each entry: the smallest input (elements) from which the cpu backend was faster than native on every",
        "measured shape of that size and larger (by 2% or more), or None: never faster there, so auto stays on",
        "native. docs/performance.md explains the rule and lists the numbers.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "# (dtype, call, layout) -> min numel or None. call: train (forward + backward), eval, fused_train, fused_eval",
        "# (a residual or an activation); layout: nchw (contiguous, and every 2D/3D input) or nhwc (channels_last).",
        "MIN_NUMEL: dict[tuple[str, str, str], int | None] = {",
    ]
    lines += [f'    ("{dtype}", "{call}", "{layout}"): {value},' for (dtype, call, layout), value in rules.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def _load(env: dict[str, Any]) -> str:
    start, end = env.get("loadavg_start"), env.get("loadavg_end")
    return f"{start[0]:.1f} at start, {end[0]:.1f} at end" if start and end else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.auto_rules", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=MODULE)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text())
    source = str(args.results.resolve().relative_to(ROOT)) if args.results.resolve().is_relative_to(ROOT) \
        else str(args.results)
    text = render(derive(result), result, source)
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        if not same:
            print(f"{args.out} is not what {args.results} gives: run python -m benchmarks.auto_rules", file=sys.stderr)
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
