"""Folding real-world models, CPU inference: ``python -m benchmarks.fold_real_models [--reps N] [--json PATH]``.

Hugging Face ``transformers``' ResNet, MobileNetV2, RegNet and EfficientNet (small random configurations of their
real architectures, 64×64 images; nothing is downloaded; the ``test-models`` extra), each timed three ways in the
same run, interleaved repetition by repetition so that a busy machine slows all of them alike, as medians:

- ``unfolded``: the model in eval mode, batch norm as separate layers;
- ``bnlab fold``: :func:`bnlab.tools.fold` with example inputs (torch.export finds the pairs, since torch.fx cannot
  trace these models whole); the folded model is the model's own class, called as ``model(pixel_values=x)``;
- ``torch fuse``: ``torch.fx.experimental.optimization.fuse``, PyTorch's conv+BN fuser, where it runs: it needs a
  torch.fx trace of the whole model, so on these models it raises, and the row says why.

Run it on a quiet machine: on a shared one the numbers move by more than the effect (say so when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.fold_speedup import environment, interleaved_medians, torch_fuse, trained_looking
from bnlab.tools import fold_with_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network for a configuration or weights
IMAGE = 64


def _models() -> dict[str, Callable[[], nn.Module]]:
    try:
        import transformers as hf
    except ImportError:
        raise SystemExit("benchmarks.fold_real_models needs transformers: pip install -e '.[test-models]'") from None
    return {
        "resnet": lambda: hf.ResNetForImageClassification(hf.ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2], layer_type="basic")),
        "mobilenet-v2": lambda: hf.MobileNetV2ForImageClassification(hf.MobileNetV2Config(
            depth_multiplier=0.5, image_size=IMAGE)),
        "regnet": lambda: hf.RegNetForImageClassification(hf.RegNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 3, 1], groups_width=16)),
        "efficientnet": lambda: hf.EfficientNetForImageClassification(hf.EfficientNetConfig(
            width_coefficient=0.25, depth_coefficient=0.5, image_size=IMAGE, hidden_dim=320)),
    }


def measure(name: str, build: Callable[[], nn.Module], batch: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = trained_looking(build())
    x = torch.randn(batch, 3, IMAGE, IMAGE)
    result = fold_with_report(model, example_inputs={"pixel_values": x})
    norms = len(result.folded) + len(result.skipped)
    variants: dict[str, nn.Module] = {"unfolded": model, "bnlab fold": result.model}
    fused = torch_fuse(model)
    if isinstance(fused, nn.Module):
        variants["torch fuse"] = fused
    with torch.inference_mode():
        reference = model(pixel_values=x).logits
        errors = {k: float((m(pixel_values=x).logits - reference).abs().max()) for k, m in variants.items()}
    medians = interleaved_medians({k: (lambda m=m: m(pixel_values=x)) for k, m in variants.items()}, reps)
    return {
        "model": name, "input": [batch, 3, IMAGE, IMAGE], "dtype": "float32", "batch_norms": norms,
        "folded": len(result.folded), "method": result.method,
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "speedup_vs_unfolded": medians["unfolded"] / medians["bnlab fold"],
        "ratio_vs_torch_fuse": (medians["torch fuse"] / medians["bnlab fold"]) if "torch fuse" in medians else None,
        "torch_fuse": "ran" if isinstance(fused, nn.Module) else fused,
        "max_abs_error": errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per variant (default 20)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results and environment as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    models = _models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notes
        rows = [measure(name, build, batch, args.reps) for batch in args.batch for name, build in models.items()]
    print(f"fold on transformers' vision models, CPU inference, float32 N×3×{IMAGE}×{IMAGE}, {args.reps} "
          f"interleaved reps, medians; {env['cpu']}, {args.threads} thread(s), torch {env['torch']}; on a shared "
          f"machine these move by several percent from run to run")
    print()
    print("| model | N | BN folded | unfolded ms | bnlab fold ms | speed-up | torch fuse | max abs error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r["median_ms"]
        fuse = (f"{ms['torch fuse']:.2f} ms ({r['ratio_vs_torch_fuse']:.2f}×)" if r["ratio_vs_torch_fuse"]
                else f"raises ({r['torch_fuse'].split(':')[0]})")
        print(f"| {r['model']} | {r['input'][0]} | {r['folded']}/{r['batch_norms']} | {ms['unfolded']:.2f} | "
              f"{ms['bnlab fold']:.2f} | {r['speedup_vs_unfolded']:.2f}× | {fuse} | "
              f"{r['max_abs_error']['bnlab fold']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
