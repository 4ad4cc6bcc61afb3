"""Summaries and the Markdown table of a benchmark run, made from its rows alone."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, dtype, layout, op, backend): geometric mean of the ratios and the worst row.

    Sorted so that the backends of one (kind, dtype, layout, op), "auto" among them, sit next to each other.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["backend"], row["kind"], row["dtype"], row["layout"], row["op"])].append(row)
        groups[(row["backend"], row["kind"], row["dtype"], "both", row["op"])].append(row)
    out = []
    for (backend, kind, dtype, layout, op), members in sorted(groups.items(), key=lambda g: _summary_order(*g[0])):
        worst = min(members, key=lambda r: r["ratio"])
        out.append({"backend": backend, "kind": kind, "dtype": dtype, "layout": layout, "op": op,
                    "rows": len(members), "geomean_ratio": geomean([r["ratio"] for r in members]),
                    "worst_ratio": worst["ratio"], "worst_case": worst["case"]})
    return out


_LAYOUT_ORDER = {"nchw": 0, "nhwc": 1, "both": 2}


def _summary_order(backend: str, kind: str, dtype: str, layout: str, op: str) -> tuple[Any, ...]:
    return kind, dtype, _LAYOUT_ORDER.get(layout, 3), layout, op, backend


def _conditions(result: dict[str, Any]) -> list[str]:
    """Header lines on what the CPU timings exclude: allocator page faults, samples disturbed by other processes."""
    lines = []
    malloc = result["environment"].get("malloc")
    if malloc is not None and result["environment"]["device"] == "cpu":
        if all(value is not None for value in malloc.values()):
            settings = " ".join(f"{name}={value}" for name, value in malloc.items())
            lines.append(f"- malloc: {settings} (set by the runner for both competitors: large outputs reuse freed "
                         f"memory instead of page-faulting fresh pages on every call; benchmarks/conditions.py)")
        else:
            lines.append("- malloc: glibc defaults (--malloc-defaults or not Linux): calls that allocate large "
                         "outputs include the page faults of fresh memory")
    d = result.get("disturbances")
    if d and d.get("probe"):
        lines.append(f"- samples retaken because another process kept a thread of this one waiting for a CPU (more "
                     f"than {d['threshold_us']:.0f} µs or {d['threshold_fraction']:.0%} of the sample): "
                     f"{d['retaken']} retakes over {d['samples']} samples; {d['kept_disturbed']} kept disturbed "
                     f"after {d['max_retakes']} retakes")
    elif d is not None and result["environment"]["device"] == "cpu":
        lines.append("- no run-queue statistics here (/proc/self/task/*/schedstat): disturbed samples were kept")
    return lines


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# bnlab benchmark: {env['device']}, suite {result['suite']}", ""]
    device = env.get("gpu") or env.get("cpu")
    lines.append(f"- device: {device}; threads: {env['threads']}; torch {env['torch']}; bnlab {env['bnlab']} "
                 f"(git {env['git'] or '?'}); python {env['python']}; {env['platform']}")
    if env.get("triton") is not None:
        lines.append(f"- triton {env['triton']}")
    lines.append(f"- {env['date']}; load average at start {env['loadavg_start']}, at end {env.get('loadavg_end')}")
    lines.append(f"- copy bandwidth measured in this run: {result['copy_bandwidth_GBps']:.1f} GB/s; medians of "
                 f"{result['reps']} interleaved repetitions; ratio = PyTorch / ours (above 1: ours is faster)")
    lines += _conditions(result)
    lines.append("- backend auto: what `backend=\"auto\"` (the default) runs for each call of that layer")
    lines += ["", "## Summary (geometric mean of the ratios; worst row)", "",
              "| kind | dtype | layout | op | backend | rows | geomean | worst | worst case |",
              "|---|---|---|---|---|---:|---:|---:|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['kind']} | {s['dtype']} | {s['layout']} | {s['op']} | {s['backend']} | {s['rows']} | "
                     f"{s['geomean_ratio']:.2f}x | {s['worst_ratio']:.2f}x | {s['worst_case']} |")
    lines += ["", "## Rows", "",
              "| case | op | backend | ours ms | PyTorch ms | ratio | GB/s | floor ms | of floor |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['op']} | {r['backend']} | {r['ours_ms']:.3f} | {r['torch_ms']:.3f} | "
                     f"{r['ratio']:.2f}x | {r['GBps']:.1f} | {r['floor_ms']:.3f} | {r['floor_fraction']:.0%} |")
    if result.get("memory"):
        lines += ["", "## Saved-for-backward bytes (saved_tensors_hooks, storages counted once)", "",
                  "| activation | input | PyTorch BN→act | save=input | save=output | output/PyTorch | "
                  "stack of conv→BN→act: PyTorch | save=output | ratio |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in result["memory"]:
            layer, stack = m["layer_bytes"], m["stack_bytes"]
            lines.append(f"| {m['activation']} | {'x'.join(map(str, m['shape']))} | {layer['torch']} | "
                         f"{layer['bnlab save=input']} | {layer['bnlab save=output']} | "
                         f"{m['layer_ratio_output']:.0%} | {stack['torch']} | {stack['bnlab save=output']} | "
                         f"{m['stack_ratio_output']:.0%} |")
    return "\n".join(lines) + "\n"
