"""CPU inference speed-up from folding batch norm: ``python benchmarks/fold_speedup.py [--reps N] [--json PATH]``.

Run it on a quiet machine; on a shared one the numbers move by more than the effect. On Linux, glibc's malloc
returns large blocks to the system and takes them back on every forward, and those page faults can cost more
than batch norm itself; ``MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000`` in the
environment (or jemalloc/tcmalloc) removes that, and shows the cost of batch norm alone.

Two small models, each timed three ways in the same run, interleaved repetition by repetition so that a busy
machine slows all of them alike, and reported as medians:

- ``unfolded``: the model in eval mode, batch norm as separate layers (torch's BatchNorm2d/1d);
- ``bnlab fold``: :func:`bnlab.tools.fold`;
- ``torch fuse``: ``torch.fx.experimental.optimization.fuse``, PyTorch's own conv+BN fuser (the competitor).

Folding removes one read and one write of every batch-norm activation. The "removed traffic" column counts
those bytes (the floor of what an unfused BN pass must move), and "GB/s saved" divides them by the time saved:
how fast the removed passes ran.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bnlab
from bnlab.tools import fold


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def vgg_small(classes: int = 10) -> nn.Module:
    """VGG-style: three stages of two 3×3 conv-BN-ReLU, max-pooling, then a BN'd hidden layer and a classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for width in (32, 64, 128):
        layers += [*_conv_bn(cin, width), *_conv_bn(width, width), nn.MaxPool2d(2)]
        cin = width
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
               nn.Linear(256, classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv-BN, a 1×1 conv-BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_small(classes: int = 10) -> nn.Module:
    """ResNet-style: a stem and three stages of two basic blocks (32, 64, 128 channels), pooling, classifier."""
    blocks: list[nn.Module] = [*_conv_bn(3, 32)]
    cin = 32
    for width, stride in ((32, 1), (64, 2), (128, 2)):
        blocks += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
        cin = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


MODELS: dict[str, Callable[[], nn.Module]] = {"vgg-small": vgg_small, "resnet-small": resnet_small}


def trained_looking(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random running statistics and affine parameters, as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _bn_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes one read and one write of every batch-norm activation move: what folding removes."""
    total = 0

    def count(module: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal total
        total += 2 * args[0].numel() * args[0].element_size()

    handles = [m.register_forward_pre_hook(count) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def torch_fuse(model: nn.Module) -> nn.Module | str:
    """PyTorch's fuser (torch.fx.experimental.optimization.fuse) on a copy, or the first line of why it cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the module pulls in deprecated torch.jit helpers
        from torch.fx.experimental.optimization import fuse
        try:
            return fuse(copy.deepcopy(model))
        except Exception as err:
            return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:100]}"


def interleaved_medians(variants: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds of each call, after a warm-up (allocator, oneDNN primitive caches), under inference mode;
    the variants take turns and who goes first rotates, so a slow stretch of a shared machine hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(3):
            for call in variants.values():
                call()
        order = list(variants)
        for rep in range(reps):
            for k in order[rep % len(order):] + order[:rep % len(order)]:
                start = time.perf_counter()
                variants[k]()
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(name: str, batch: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = trained_looking(MODELS[name]())
    x = torch.randn(batch, 3, 32, 32)
    # The examples let fold check the BatchNorm1d/Linear pair of vgg-small (2-D input) and its own outputs.
    fused = torch_fuse(model)
    if not isinstance(fused, nn.Module):
        raise RuntimeError(f"torch's fuser failed on {name}: {fused}")
    variants = {"unfolded": model, "bnlab fold": fold(model, example_inputs=x), "torch fuse": fused}
    with torch.inference_mode():
        reference = model(x)
        errors = {k: float((m(x) - reference).abs().max()) for k, m in variants.items()}
    medians = interleaved_medians({k: (lambda m=m: m(x)) for k, m in variants.items()}, reps)
    removed = _bn_bytes(model, x)
    saved = medians["unfolded"] - medians["bnlab fold"]
    return {
        "model": name, "input": [batch, 3, 32, 32], "dtype": "float32", "layout": "contiguous",
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "speedup_vs_unfolded": medians["unfolded"] / medians["bnlab fold"],
        "ratio_vs_torch_fuse": medians["torch fuse"] / medians["bnlab fold"],
        "max_abs_error": errors, "removed_bytes": removed,
        "saved_gb_per_s": removed / saved / 1e9 if saved > 0 else None,
    }


def environment(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"bnlab": bnlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu, "threads": threads, "machine": platform.machine()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40, help="timed repetitions per variant (default 40)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results and environment as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    rows = [measure(name, batch, args.reps) for batch in args.batch for name in MODELS]
    print(f"fold speed-up, CPU inference, float32 N×3×32×32 contiguous, {args.reps} interleaved reps, medians; "
          f"{env['cpu']}, {args.threads} thread(s), torch {env['torch']}")
    print()
    print("| model | N | unfolded ms | bnlab fold ms | torch fuse ms | speed-up | vs torch fuse | max abs error | "
          "removed traffic | GB/s saved |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r["median_ms"]
        gbs = "n/a" if r["saved_gb_per_s"] is None else f"{r['saved_gb_per_s']:.1f}"
        print(f"| {r['model']} | {r['input'][0]} | {ms['unfolded']:.2f} | {ms['bnlab fold']:.2f} | "
              f"{ms['torch fuse']:.2f} | "
              f"{r['speedup_vs_unfolded']:.2f}× | {r['ratio_vs_torch_fuse']:.2f}× | "
              f"{r['max_abs_error']['bnlab fold']:.1e} | {r['removed_bytes'] / 1e6:.1f} MB | {gbs} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
