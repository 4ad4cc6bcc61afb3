"""Where ``backend="auto"`` runs the cpu backend: measured, not guessed. GENERATED, do not edit.

Written by ``python -m benchmarks.auto_rules`` (``make bench`` runs it after the benchmark) from
``benchmarks/results/cpu-full.json``:
Intel(R) Xeon(R) Processor, 2 threads, torch 2.13.0+cpu, git 48c4a58,
2026-12-06 20:20:27, load average 1.2 at start, 2.0 at end.
Each entry: the smallest input (elements) from which the cpu backend was faster than native on every
measured shape of that size and larger (by 2% or more), or None: never faster there, so auto stays on
native. docs/performance.md explains the rule and lists the numbers.
"""

from __future__ import annotations

# (dtype, call, layout) -> min numel or None. call: train (forward + backward), eval, fused_train, fused_eval
# (a residual or an activation); layout: nchw (contiguous, and every 2D/3D input) or nhwc (channels_last).
MIN_NUMEL: dict[tuple[str, str, str], int | None] = {
    ("bfloat16", "eval", "nchw"): 1605632,
    ("bfloat16", "eval", "nhwc"): 6422528,
    ("bfloat16", "train", "nchw"): None,
    ("bfloat16", "train", "nhwc"): 1605632,
    ("float32", "eval", "nchw"): None,
    ("float32", "eval", "nhwc"): 802816,
    ("float32", "fused_eval", "nchw"): 1605632,
    ("float32", "fused_eval", "nhwc"): 1605632,
    ("float32", "fused_train", "nchw"): 1605632,
    ("float32", "fused_train", "nhwc"): 1605632,
    ("float32", "train", "nchw"): 401408,
    ("float32", "train", "nhwc"): 1605632,
}
