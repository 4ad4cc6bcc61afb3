"""The benchmark runner: ``python -m benchmarks.run --device cpu|cuda [--suite quick|full] [--json out.json]``.

For every case of the catalogue (:mod:`benchmarks.shapes`) it times the training forward, the backward, forward +
backward and the eval forward of every bnlab backend that can run (``reference`` only when asked) and of PyTorch
(``torch.nn.BatchNorm*d``; for fused cases PyTorch's unfused ``bn → add → relu``), in the same run:

- repetitions are interleaved (ours, PyTorch, ours, ...) so a noisy neighbour hurts both, and the median is kept;
- input buffers rotate, so a call does not find its input in the cache the previous call left;
- on CUDA, times come from CUDA events; on CPU from ``time.perf_counter``;
- on CPU (Linux) the runner restarts itself once with malloc settings that stop glibc from page-faulting fresh
  memory for every large output, and retakes a sample during which another process kept one of its threads
  waiting for a CPU (:mod:`benchmarks.conditions`); the Markdown header states both.

``bnlab`` appears as each explicit backend and as ``auto``, the layer as users get it (``backend="auto"``: on
CPU, ``native`` for small layers and for eval, ``cpu`` for large training inputs).

Each row has our median, PyTorch's, the ratio (PyTorch / ours: above 1 is faster), the GB/s achieved over the
byte floor's bytes, and the floor itself: the minimum bytes the operation moves (read x and write y for a forward,
read dy and x and write dx for a backward, plus the residual and its gradient when fused) over the copy bandwidth
measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bnlab
from benchmarks import memory
from benchmarks.conditions import InterferenceProbe, malloc_settings, reexec_with_malloc_settings
from benchmarks.report import markdown, summarize
from benchmarks.shapes import Case, catalogue

OPS = ("fwd", "bwd", "fwd+bwd", "eval")
# Bytes moved per element, in units of the element size: (bn, fused with residual).
FLOOR_PASSES = {"fwd": (2, 3), "bwd": (3, 4), "fwd+bwd": (5, 7), "eval": (2, 3)}
ROTATE_BYTES = {"cpu": 256 << 20, "cuda": 512 << 20}  # rotate inputs until this many bytes are in play
AUTO = "auto"
# A CPU sample is retaken (at most MAX_RETAKES times) when this process's threads waited on a run queue for more
# than DISTURBED_NS or DISTURBED_FRACTION of the sample: waking a thread-pool worker costs a few microseconds,
# losing the CPU to another process a scheduler slice (milliseconds).
DISTURBED_NS, DISTURBED_FRACTION, MAX_RETAKES = 50_000, 0.05, 10


class Timer:
    """Wall time of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def copy_bandwidth(device: torch.device, timer: Timer, reps: int) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted), median of ``reps``."""
    n = (256 << 20) // 4 if device.type == "cuda" else (128 << 20) // 4
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    for _ in range(3):
        dst.copy_(src)
    times = [timer(lambda: dst.copy_(src)) for _ in range(reps)]
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def _norm_cls(case: Case, fused: bool) -> type:
    if fused:
        return {2: bnlab.nn.BatchNormAct1d, 3: bnlab.nn.BatchNormAct1d, 4: bnlab.nn.BatchNormAct2d}[len(case.shape)]
    return {2: bnlab.nn.BatchNorm1d, 3: bnlab.nn.BatchNorm1d, 4: bnlab.nn.BatchNorm2d}[len(case.shape)]


def _torch_cls(case: Case) -> type:
    return {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(case.shape)]


def build(case: Case, who: str, device: torch.device) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """The module under test and how to call it on (x, residual)."""
    channels = case.shape[1]
    if who == "torch":
        bn = _torch_cls(case)(channels, device=device)
        if case.fused:
            return bn, lambda x, r: torch.relu(bn(x) + r)
        return bn, lambda x, r: bn(x)
    module = _norm_cls(case, case.fused)(channels, device=device, backend=who)
    if case.fused:
        return module, lambda x, r: module(x, r)
    return module, lambda x, r: module(x)


def make_buffers(case: Case, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Rotating (x, residual, grad_y) triples in the case's dtype and layout."""
    numel = math.prod(case.shape)
    per_copy = numel * torch.finfo(case.dtype).bits // 8 * 3
    copies = max(2, min(8, ROTATE_BYTES[device.type] // max(per_copy, 1)))
    fmt = torch.channels_last if case.layout == "nhwc" else torch.contiguous_format
    out = []
    for _ in range(copies):
        x, r, g = (torch.randn(case.shape, device=device).to(case.dtype).contiguous(memory_format=fmt)
                   for _ in range(3))
        out.append((x.requires_grad_(True), r.requires_grad_(case.fused), g))
    return out


def op_callables(module: nn.Module, call: Callable[..., torch.Tensor], buffers: list[Any],
                 op: str) -> tuple[Callable[[int], Callable[[], Any]], Callable[[], None]]:
    """(prepare(i) -> the timed call on buffer i, cleanup) for one operation."""
    params = list(module.parameters())

    def clear() -> None:
        for t in params:
            t.grad = None
        for x, r, _ in buffers:
            x.grad = None
            r.grad = None

    def prepare(i: int) -> Callable[[], Any]:
        x, r, g = buffers[i]
        module.train(op != "eval")
        if op == "fwd":
            return lambda: call(x, r)
        if op == "fwd+bwd":
            return lambda: call(x, r).backward(g)
        if op == "bwd":
            y = call(x, r)  # untimed: the forward whose backward is timed
            return lambda: y.backward(g)

        def evaluate() -> Any:
            with torch.no_grad():
                return call(x, r)

        return evaluate

    return prepare, clear


class Disturbances:
    """Counts of CPU samples retaken because another process took a CPU, and of those kept after MAX_RETAKES."""

    def __init__(self, probe: InterferenceProbe | None) -> None:
        self.probe = probe
        self.samples = self.retaken = self.kept = 0

    def measure(self, timer: Timer, prepare: Callable[[], Callable[[], Any]], clear: Callable[[], None]) -> float:
        """One sample of ``prepare()()``, retaken while the probe says a thread was kept waiting."""
        self.samples += 1
        for attempt in range(MAX_RETAKES + 1):
            fn = prepare()
            before = self.probe.waited_ns() if self.probe else 0
            elapsed = timer(fn)
            waited = (self.probe.waited_ns() - before) if self.probe else 0
            clear()
            if waited <= max(DISTURBED_NS, DISTURBED_FRACTION * elapsed * 1e9):
                return elapsed
            if attempt < MAX_RETAKES:
                self.retaken += 1
        self.kept += 1
        return elapsed

    def as_dict(self) -> dict[str, Any]:
        return {"probe": self.probe is not None, "samples": self.samples, "retaken": self.retaken,
                "kept_disturbed": self.kept, "threshold_us": DISTURBED_NS / 1e3,
                "threshold_fraction": DISTURBED_FRACTION, "max_retakes": MAX_RETAKES}


def time_case(case: Case, competitors: list[str], device: torch.device, timer: Timer, reps: int,
              warmup_s: float, disturbances: Disturbances) -> dict[str, dict[str, float]]:
    """Median seconds per (competitor, op), with the competitors' repetitions interleaved."""
    buffers = make_buffers(case, device)
    built = {who: build(case, who, device) for who in competitors}
    medians: dict[str, dict[str, float]] = {who: {} for who in competitors}
    for op in OPS:
        calls = {who: op_callables(*built[who], buffers, op) for who in competitors}
        for who in competitors:  # warm-up: compile, allocate, wake the thread pool
            prepare, clear = calls[who]
            start, i = time.perf_counter(), 0
            while time.perf_counter() - start < warmup_s or i < 3:
                prepare(i % len(buffers))()
                clear()
                i += 1
        samples: dict[str, list[float]] = {who: [] for who in competitors}
        for rep in range(reps):
            order = competitors[rep % len(competitors):] + competitors[:rep % len(competitors)]
            for who in order:
                prepare, clear = calls[who]
                slot = rep % len(buffers)
                samples[who].append(disturbances.measure(timer, partial(prepare, slot), clear))
        for who in competitors:
            medians[who][op] = statistics.median(samples[who])
    return medians


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "torch": torch.__version__,
        "bnlab": bnlab.__version__, "git": rev, "device": device.type, "threads": threads,
        "platform": platform.platform(), "cpu": _cpu_name(), "loadavg_start": list(os.getloadavg()),
        "malloc": malloc_settings(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def competitors(backends: list[str] | None, device: torch.device, dtype: torch.dtype) -> list[str]:
    """bnlab's side of a case: the requested backends that can run it, by default every available one but
    reference, then "auto"."""
    available = bnlab.available_backends(device, dtype)
    if backends:
        return [b for b in backends if b == AUTO or b in available]
    return [b for b in available if b != "reference"] + [AUTO]


def run(device_name: str, suite: str, backends: list[str] | None, reps: int, warmup_s: float,
        threads: int | None, cases_filter: str | None) -> dict[str, Any]:
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    timer = Timer(device)
    bandwidth = copy_bandwidth(device, timer, max(reps, 10))
    env = environment(device, torch.get_num_threads())
    probe = InterferenceProbe() if device.type == "cpu" else None
    disturbances = Disturbances(probe if probe is not None and probe.available else None)
    rows: list[dict[str, Any]] = []
    for case in catalogue(device_name, suite):
        if cases_filter and cases_filter not in case.name:
            continue
        ours = competitors(backends, device, case.dtype)
        medians = time_case(case, [*ours, "torch"], device, timer, reps, warmup_s, disturbances)
        element_bytes = torch.finfo(case.dtype).bits // 8
        for op in OPS:
            floor_bytes = FLOOR_PASSES[op][int(case.fused)] * math.prod(case.shape) * element_bytes
            floor_s = floor_bytes / bandwidth
            for who in ours:
                ours_s, torch_s = medians[who][op], medians["torch"][op]
                rows.append({
                    "case": case.name, "kind": "bn+add+relu" if case.fused else "bn", "shape": list(case.shape),
                    "dtype": str(case.dtype).removeprefix("torch."), "layout": case.layout, "op": op,
                    "backend": who, "ours_ms": ours_s * 1e3, "torch_ms": torch_s * 1e3, "ratio": torch_s / ours_s,
                    "GBps": floor_bytes / ours_s / 1e9, "floor_ms": floor_s * 1e3, "floor_fraction": floor_s / ours_s,
                })
        print(f"  {case.name}: " + ", ".join(
            f"{who} {medians[who]['fwd+bwd'] * 1e3:.3f} ms" for who in [*ours, "torch"]) + " (fwd+bwd)",
            file=sys.stderr, flush=True)
    env["loadavg_end"] = list(os.getloadavg())
    result = {"environment": env, "suite": suite, "reps": reps, "copy_bandwidth_GBps": bandwidth / 1e9,
              "disturbances": disturbances.as_dict(), "rows": rows}
    result["summary"] = summarize(rows)
    if device.type == "cpu":
        result["memory"] = [memory.measure(act) for act in ("leaky_relu", "elu", "identity")]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")
    parser.add_argument("--json", type=Path, help="write the results here (and the Markdown next to it, .md)")
    parser.add_argument("--backends", nargs="+", help="bnlab backends to time, 'auto' included (default: every "
                        "available one but reference, and auto)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per op (default 25 CPU, 100 GPU)")
    parser.add_argument("--warmup", type=float, default=0.2, help="seconds of warm-up per competitor and op")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--cases", default=None, help="only cases whose name contains this text")
    parser.add_argument("--malloc-defaults", action="store_true", help="keep glibc's malloc settings (by default "
                        "the runner restarts itself once with large-allocation reuse: benchmarks/conditions.py)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.run: error: --device cuda needs a CUDA GPU, and torch sees none here", file=sys.stderr)
        return 2
    for name in args.backends or []:
        if name != AUTO and name not in bnlab.kernels.backend_names():
            print(f"benchmarks.run: error: unknown backend {name!r}; known: {[AUTO, *bnlab.kernels.backend_names()]}",
                  file=sys.stderr)
            return 2
    reps = args.reps or (100 if args.device == "cuda" else 25)
    result = run(args.device, args.suite, args.backends, reps, args.warmup, args.threads, args.cases)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        args.json.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    reexec_with_malloc_settings(sys.argv[1:])
    sys.exit(main())
