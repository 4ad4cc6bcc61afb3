"""Issue 15's CPU targets read off a benchmark run, as the Markdown table the README shows.

Every number comes from the run's rows (``benchmarks.run``'s JSON): geometric means and worst rows of the ratio
PyTorch / bnlab, and the share of the byte floor. Both the ``cpu`` backend and ``auto`` (what users get) are given.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report import geomean

# "The ResNet shapes of 8×64×112×112 and larger": the byte-floor target's rows.
LARGE_NUMEL = 8 * 64 * 112 * 112


def _rows(result: dict[str, Any], backend: str, *, kind: str = "bn", dtype: str = "float32",
          layout: str | None = None, op: str = "fwd+bwd", min_numel: int = 0) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if r["backend"] == backend and r["kind"] == kind and r["dtype"] == dtype
            and (layout is None or r["layout"] == layout) and r["op"] == op and math.prod(r["shape"]) >= min_numel]


def _ratio(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "not measured"
    worst = min(rows, key=lambda r: r["ratio"])
    return f"{geomean([r['ratio'] for r in rows]):.2f}x (worst {worst['ratio']:.2f}x, {len(rows)} rows)"


def _floor(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "not measured"
    worst = min(rows, key=lambda r: r["floor_fraction"])
    return f"{min(r['floor_fraction'] for r in rows):.0%} (lowest: {worst['case']})"


def _met(rows: list[dict[str, Any]], geo: float, worst: float | None = None) -> bool:
    if not rows:
        return False
    ratios = [r["ratio"] for r in rows]
    return geomean(ratios) >= geo and (worst is None or min(ratios) >= worst)


TARGETS: list[tuple[str, dict[str, Any], float, float | None]] = [
    ("float32 forward + backward, NCHW: geomean ≥ 1.5x, no row < 1.0x", {"layout": "nchw"}, 1.5, 1.0),
    ("float32 forward + backward, channels_last: geomean ≥ 1.5x, no row < 1.0x", {"layout": "nhwc"}, 1.5, 1.0),
    ("float32 backward alone: geomean ≥ 1.5x", {"op": "bwd"}, 1.5, None),
    ("float32 eval: no row < 1.0x", {"op": "eval"}, 0.0, 1.0),
    ("bfloat16 forward + backward: geomean ≥ 1.2x", {"dtype": "bfloat16"}, 1.2, None),
    ("BN + add + ReLU forward + backward: ≥ 2x PyTorch's unfused sequence", {"kind": "bn+add+relu"}, 2.0, 2.0),
]


def table(result: dict[str, Any]) -> str:
    """The targets table (Markdown), one line per target, for the cpu backend and for auto."""
    env = result["environment"]
    lines = [f"Measured {env['date']} on {env.get('cpu')}, {env['threads']} threads, torch {env['torch']}, suite "
             f"{result['suite']} (load average {env['loadavg_start'][0]:.1f} at start, "
             f"{(env.get('loadavg_end') or [float('nan')])[0]:.1f} at end; "
             f"copy bandwidth {result['copy_bandwidth_GBps']:.1f} GB/s). Ratio = PyTorch time / bnlab time.", "",
             "| target | `cpu` backend | `auto` (the default) | met by `auto` |", "|---|---|---|---|"]
    for label, select, geo, worst in TARGETS:
        cpu, auto = _rows(result, "cpu", **select), _rows(result, "auto", **select)
        lines.append(f"| {label} | {_ratio(cpu)} | {_ratio(auto)} | {'yes' if _met(auto, geo, worst) else 'no'} |")
    cpu = _rows(result, "cpu", min_numel=LARGE_NUMEL)
    auto = _rows(result, "auto", min_numel=LARGE_NUMEL)
    met = bool(auto) and min(r["floor_fraction"] for r in auto) >= 0.5
    lines.append(f"| forward + backward ≥ 50% of the byte floor, 8×64×112×112 and larger | {_floor(cpu)} | "
                 f"{_floor(auto)} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"
