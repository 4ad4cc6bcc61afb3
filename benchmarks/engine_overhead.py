"""Engine overhead: steps/second of the Figure 1 network trained by bnlab's engine against a hand-written loop.

    python -m benchmarks.engine_overhead [--steps 1000] [--reps 9] [--threads 1] [--json out.json]

Three loops train the same 784-100-100-100-10 sigmoid MLP with batch norm (batches of 60, plain SGD), from the
same initial weights, on the same data, with the same batch order (a fresh permutation per epoch, cut into
slices):

- ``hand + torch BN``: a minimal hand-written PyTorch loop with ``torch.nn.BatchNorm1d`` (the competitor);
- ``hand + bnlab BN``: the same loop with ``bnlab.BatchNorm1d`` (backend auto), to tell the layer's cost apart;
- ``engine + bnlab BN``: ``bnlab.lab.engine.train`` with ``bnlab.BatchNorm1d``, evaluation off (the engine's
  evaluations happen only at the steps a caller asks for; Figure 1's cost of evaluating is printed apart).

Repetitions are interleaved (the order rotates each round) and medians reported, because the machine may be
shared. The goal: the engine within 10% of the hand-written loop (ratio ≥ 0.90). A training step here is bound by
per-operation overhead, not memory: the bandwidth column shows how far from the byte floor that leaves it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import bnlab
from bnlab.lab import engine
from bnlab.lab.experiments import fig1

BATCH = 60
GOAL = 0.90


def _data(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def _models() -> dict[str, torch.nn.Sequential]:
    torch.manual_seed(0)
    config = fig1.Fig1Config()
    bn = fig1.build_pair(784, 10, config)["bn"]
    as_torch = bnlab.convert(bn, to="torch")  # identical weights, torch.nn.BatchNorm1d layers
    bn_hand = bnlab.convert(as_torch, to="bnlab")
    return {"hand + torch BN": as_torch, "hand + bnlab BN": bn_hand, "engine + bnlab BN": bn}


def hand_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> None:
    """The competitor: what a person writes by hand, nothing more."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(x.shape[0], generator=gen)
        xs, ys = x[order], y[order]
        for start in range(0, x.shape[0] - BATCH + 1, BATCH):
            loss = torch.nn.functional.cross_entropy(model(xs[start:start + BATCH]), ys[start:start + BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                return


def engine_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> None:
    opt = engine.make_optimizer(model.parameters(), "sgd", lr)
    engine.train(model, x, y, opt, steps=steps, batch_size=BATCH, seed=seed, progress=False)


def _eval_cost(model: torch.nn.Module) -> float:
    """Seconds Figure 1's evaluation takes per training step at its default interval (10,000 test images)."""
    x_test = torch.rand(10_000, 784)
    y_test = torch.randint(0, 10, (10_000,))
    q = torch.tensor([0.15, 0.5, 0.85])
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            h = model[:-2](x_test)  # the input of the last sigmoid
            torch.quantile(h, q, dim=0)
            (model[-2:](h).argmax(1) == y_test).float().mean().item()
    model.train()
    return (time.perf_counter() - start) / 3 / fig1.Fig1Config().eval_every


def floor_bytes_per_step(model: torch.nn.Module) -> int:
    """fp32 bytes a step must move at least: parameters read (forward, backward), gradients written and read,
    parameters written by SGD, and the input batch read once."""
    params = sum(p.numel() for p in model.parameters())
    return 4 * (5 * params + BATCH * 784)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=9, help="repetitions of each loop (interleaved)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (the lab's default is 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = _data()
    models = _models()
    loops: dict[str, Callable[..., None]] = {"hand + torch BN": hand_loop, "hand + bnlab BN": hand_loop,
                                             "engine + bnlab BN": engine_loop}
    names = list(loops)
    for name in names:  # warm-up: allocator, first-call dispatch
        loops[name](models[name], x, y, 50, 0.1, 0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names[rep % 3:] + names[:rep % 3]:
            start = time.perf_counter()
            loops[name](models[name], x, y, args.steps, 0.1, rep)
            times[name].append(time.perf_counter() - start)
    floor = floor_bytes_per_step(models["engine + bnlab BN"])
    competitor = args.steps / statistics.median(times["hand + torch BN"])
    rows = []
    for name in names:
        rate = args.steps / statistics.median(times[name])
        rows.append({"loop": name, "steps_per_s": rate, "ratio_vs_hand_torch": rate / competitor,
                     "gb_per_s": rate * floor / 1e9,
                     "spread_steps_per_s": [args.steps / max(times[name]), args.steps / min(times[name])]})
    eval_per_step = _eval_cost(models["engine + bnlab BN"])
    env = {"torch": torch.__version__, "bnlab": bnlab.__version__, "python": platform.python_version(),
           "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           # What "auto" runs for these layers' training input (60, 100) on this machine.
           "batch_norm_backend": bnlab.kernels.resolve("auto", torch.device("cpu"), torch.float32, BATCH * 100,
                                                       True).name}
    print(f"# Engine overhead: Figure 1 network, batch {BATCH}, {args.steps} steps x {args.reps} interleaved reps, "
          f"medians ({env['threads']} thread(s), torch {env['torch']}, backend {env['batch_norm_backend']})\n")
    print("| loop | steps/s (median) | min – max | ratio vs hand + torch BN | GB/s achieved | byte floor/step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["spread_steps_per_s"]
        print(f"| {r['loop']} | {r['steps_per_s']:.0f} | {lo:.0f} – {hi:.0f} | {r['ratio_vs_hand_torch']:.3f} | "
              f"{r['gb_per_s']:.2f} | {floor / 1e6:.2f} MB |")
    engine_ratio = rows[2]["ratio_vs_hand_torch"]
    verdict = "PASS" if engine_ratio >= GOAL else "FAIL"
    print(f"\nengine / hand-written (torch BN): {engine_ratio:.3f} (goal >= {GOAL:.2f}): {verdict}")
    print(f"engine / hand-written (bnlab BN): {rows[2]['steps_per_s'] / rows[1]['steps_per_s']:.3f} (the engine's "
          f"own cost); bnlab BN / torch BN in the same loop: {rows[1]['ratio_vs_hand_torch']:.3f} (the layer's)")
    print(f"Figure 1's evaluation (every {fig1.Fig1Config().eval_every} steps) adds {1e6 * eval_per_step:.0f} us per "
          f"training step amortized, {100 * eval_per_step * rows[2]['steps_per_s']:.1f}% of the step time")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows, "engine_ratio": engine_ratio,
                                         "eval_seconds_per_step": eval_per_step}, indent=2) + "\n")


if __name__ == "__main__":
    main()
