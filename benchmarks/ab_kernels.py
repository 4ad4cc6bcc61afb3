"""Two builds of the C++ kernels timed against each other in one process: ``python -m benchmarks.ab_kernels``.

``--base REV`` (default HEAD) is built from ``git show REV:src/bnlab/kernels/cpu/bnlab_cpu.cpp``, the candidate from
the working tree; both with build.py's flags. Each case calls the raw C entry points (no Python layer, no
allocation in the timed region), the two builds alternating call by call with the order flipped every
repetition, so a neighbour's load hits both alike; the medians and their ratio are printed. Meant for a shared
machine, where only such paired medians mean anything: say the load average (printed) when quoting them.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnlab.kernels.cpu import build

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "src/bnlab/kernels/cpu/bnlab_cpu.cpp"
CASES = ["8x64x112x112", "8x256x56x56", "8x1024x14x14", "8x2048x7x7", "256x512"]
_DT = {"float32": (torch.float32, 0), "bfloat16": (torch.bfloat16, 2)}


def compile_source(text: str, out_dir: Path, name: str) -> ctypes.CDLL:
    compiler = build.find_compiler()
    if compiler is None:
        raise SystemExit("ab_kernels: no C++ compiler")
    src, lib = out_dir / f"{name}.cpp", out_dir / f"{name}.so"
    src.write_text(text)
    subprocess.run([compiler, *build.BASE_FLAGS, "-march=native", str(src), "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    dll.bnlab_forward_train.argtypes = [i32, p, p, p, p, p, i64, i64, i64, i32, f64, i32, f64, p, p, p, i32]
    dll.bnlab_backward.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i32, i32, f64, i32, p, p, p, p, i32]
    return dll


def calls(dll: ctypes.CDLL, shape: tuple[int, ...], layout: int, code: int, dtype: torch.dtype,
          fused: bool) -> dict[str, object]:
    n, c = shape[0], shape[1]
    s = 1
    for d in shape[2:]:
        s *= d
    x, g, r = (torch.randn(n * c * s).to(dtype) for _ in range(3))
    y, dx, dr = (torch.empty_like(x) for _ in range(3))
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    mean, invstd, var, dw, db = (torch.empty(c) for _ in range(5))
    nt = torch.get_num_threads()
    act = 1 if fused else 0
    # The residual and its gradient are read through the closures (not only their addresses): a tensor nothing
    # refers to is freed when this function returns, and the kernels would read unmapped memory.
    kept = (r, dr) if fused else None

    def fwd() -> None:
        res = None if kept is None else kept[0].data_ptr()
        dll.bnlab_forward_train(code, x.data_ptr(), res, y.data_ptr(), w.data_ptr(), b.data_ptr(), n, c, s, layout,
                                1e-5, act, 0.01, mean.data_ptr(), invstd.data_ptr(), var.data_ptr(), nt)

    def bwd() -> None:
        res, dres = (None, None) if kept is None else (kept[0].data_ptr(), kept[1].data_ptr())
        dll.bnlab_backward(code, g.data_ptr(), x.data_ptr(), res, w.data_ptr(), b.data_ptr(), mean.data_ptr(),
                           invstd.data_ptr(), n, c, s, layout, act, 0.01, 0, dx.data_ptr(), dres, dw.data_ptr(),
                           db.data_ptr(), nt)

    fwd()
    return {"fwd": fwd, "bwd": bwd}


def even_reps(reps: int) -> int:
    """At least 2 and even: each build then runs first in exactly half of the pairs. With an odd count one build
    ran first once more, and where the second call of a pair finds the caches warm (the distribution of either
    build is then two humps), that one extra sample moved the build's median onto the slow hump."""
    return max(2, reps + reps % 2)


def paired_ratio(base: list[float], new: list[float]) -> float:
    """Geometric mean of base / new over the alternating pairs: the warm-cache advantage of the second call of a
    pair cancels between the pairs where each build went second."""
    return math.exp(statistics.fmean(math.log(b / n) for b, n in zip(base, new, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the base build (default HEAD)")
    parser.add_argument("--cases", nargs="+", default=CASES, help="shapes as NxCxHxW or NxC")
    parser.add_argument("--layouts", nargs="+", choices=["nchw", "nhwc"], default=["nchw", "nhwc"])
    parser.add_argument("--dtype", choices=list(_DT), default="float32")
    parser.add_argument("--fused", action="store_true", help="with a residual and ReLU")
    parser.add_argument("--reps", type=int, default=40, help="alternating pairs (rounded up to even)")
    parser.add_argument("--threads", type=int, default=None, help="OpenMP threads per call (default: torch's). "
                        "On a loaded machine 1 is the honest choice: a team of 2 waits at its barrier for a "
                        "preempted thread, and the medians come out in multiples of a scheduler slice")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_text = subprocess.run(["git", "show", f"{args.base}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    dtype, code = _DT[args.dtype]
    reps = even_reps(args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        dlls = {"base": compile_source(base_text, Path(tmp), "base"),
                "new": compile_source((ROOT / SOURCE).read_text(), Path(tmp), "new")}
        print(f"load average {os.getloadavg()[0]:.1f}; threads {torch.get_num_threads()}; {args.dtype}"
              f"{' fused' if args.fused else ''}; medians of {reps} alternating calls; ratio = base / new; "
              "paired = geometric mean of base / new over the pairs")
        for case in args.cases:
            shape = tuple(int(v) for v in case.split("x"))
            for layout_name in args.layouts:
                if layout_name == "nhwc" and len(shape) != 4:
                    continue
                layout = 1 if layout_name == "nhwc" or len(shape) == 2 else 0
                fns = {k: calls(d, shape, layout, code, dtype, args.fused) for k, d in dlls.items()}
                for op in ("fwd", "bwd"):
                    times: dict[str, list[float]] = {"base": [], "new": []}
                    for rep in range(reps):
                        for who in (("base", "new") if rep % 2 else ("new", "base")):
                            fn = fns[who][op]
                            t0 = time.perf_counter()
                            fn()  # type: ignore[operator]
                            times[who].append(time.perf_counter() - t0)
                    mb, mn = statistics.median(times["base"]), statistics.median(times["new"])
                    print(f"  {case:>14} {layout_name} {op}: base {mb * 1e3:7.3f} ms  new {mn * 1e3:7.3f} ms  "
                          f"ratio {mb / mn:.2f}x  paired {paired_ratio(times['base'], times['new']):.2f}x")
        print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
