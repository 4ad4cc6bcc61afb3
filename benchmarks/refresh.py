"""One command for a quiet machine: ``python -m benchmarks.refresh`` (``make bench`` runs it).

1. runs the CPU suite (``benchmarks.run --suite full``: both layouts, float32 and bfloat16, fused rows) into
   ``benchmarks/results/cpu-full.json`` and ``.md``;
2. regenerates ``auto``'s rules from it (``src/bnlab/kernels/cpu/auto_rules.py``, :mod:`benchmarks.auto_rules`);
3. rewrites the generated parts of ``README.md`` (the targets table) and ``docs/performance.md`` (the targets
   table and the rules with the measurements behind them), between their ``<!-- generated: NAME -->`` markers.

``--from-results`` skips step 1 and regenerates 2 and 3 from the committed JSON. Run it when no one else uses
the machine (the load average is printed before and written into every table) and commit what changed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import auto_rules
from benchmarks.targets import table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cpu-full.json"
README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"


def replace_generated(text: str, name: str, body: str) -> str:
    """text with the part between ``<!-- generated: name -->`` and ``<!-- end: name -->`` replaced by body."""
    start, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"benchmarks.refresh: error: no {start} ... {end} markers found")
    return pattern.sub(lambda _: f"{start}\n{body}{end}", text, count=1)


def rules_table(result: dict[str, Any]) -> str:
    """auto's rules with the cpu/native speed-ups they were derived from (Markdown)."""
    rules = auto_rules.derive(result)
    lines = ["| dtype | call | layout | auto runs `cpu` from | cpu vs native, per shape (elements: native/cpu time) |",
             "|---|---|---|---:|---|"]
    for (dtype, call, layout), threshold in rules.items():
        measured = []
        for row in result["rows"]:
            key = (row["dtype"], auto_rules.CALLS.get((row["kind"], row["op"])), row["layout"])
            if key != (dtype, call, layout) or row["backend"] != "cpu":
                continue
            native = next((r for r in result["rows"] if r["case"] == row["case"] and r["op"] == row["op"]
                           and r["backend"] == "native"), None)
            if native is not None:
                measured.append((math.prod(row["shape"]), native["ours_ms"] / row["ours_ms"]))
        cells = ", ".join(f"{n:,}: {s:.2f}x" for n, s in sorted(measured))
        start = "never (native)" if threshold is None else f"{threshold:,} elements"
        lines.append(f"| {dtype} | {call} | {layout} | {start} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refresh", description=__doc__.splitlines()[0])
    parser.add_argument("--from-results", action="store_true", help="do not benchmark: regenerate from the JSON")
    parser.add_argument("--reps", type=int, default=None, help="passed to benchmarks.run")
    args = parser.parse_args(argv)
    if not args.from_results:
        print(f"benchmarks.refresh: load average {os.getloadavg()} (quiet means below 0.5 on this machine)",
              file=sys.stderr)
        command = [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--suite", "full", "--json",
                   str(RESULTS)] + (["--reps", str(args.reps)] if args.reps else [])
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(RESULTS.read_text())
    auto_rules.main(["--results", str(RESULTS)])
    targets = table(result)
    README.write_text(replace_generated(README.read_text(), "cpu-targets", targets))
    text = replace_generated(PERFORMANCE.read_text(), "cpu-targets", targets)
    PERFORMANCE.write_text(replace_generated(text, "auto-rules", rules_table(result)))
    print("benchmarks.refresh: wrote benchmarks/results/cpu-full.*, src/bnlab/kernels/cpu/auto_rules.py, README.md, "
          "docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
