"""The BN doctor on a model trained with a deliberately wrong batch-norm setup, next to one trained right.

Run with ``.venv/bin/python examples/doctor_demo.py [OUT_DIR]`` (default ``runs/doctor_demo``). It trains the same
small CNN twice on a synthetic 10-class image task (about 20 seconds on one CPU core):

- wrong: Keras-style ``momentum=0.99``, dropout right before two batch norms, conv/linear biases before batch
  norm, and batches of 4 samples;
- right: PyTorch's ``momentum=0.1``, no dropout before batch norm, no redundant biases, batches of 64.

It writes both models' weights and the test data (``test.npz``) to OUT_DIR, prints the doctor's report for each,
and prints the equivalent ``bnlab doctor`` commands (the factories are :func:`wrong_setup` and
:func:`right_setup` in this file).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bnlab.tools

CLASSES, SIZE = 10, 12
WRONG_BATCH, RIGHT_BATCH = 4, 64


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy, shifted copies of 10 fixed 12×12 patterns; the first 10 draws of the generator fix the patterns."""
    patterns = torch.nn.functional.avg_pool2d(torch.randn(CLASSES, 1, SIZE + 2, SIZE + 2, generator=generator),
                                              3, stride=1)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    brightness = torch.rand(n, 1, 1, 1, generator=generator) * 2
    x = patterns[labels] * 1.5 + brightness + torch.randn(n, 1, SIZE, SIZE, generator=generator)
    return x, labels


def _net(*, momentum: float, dropout: float, bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=bias), nn.BatchNorm2d(16, momentum=momentum),
                               nn.ReLU(), nn.MaxPool2d(2)]
    if dropout:
        layers.append(nn.Dropout(dropout))  # right before the next conv's batch norm input: the variance shift
    layers += [nn.Conv2d(16, 32, 3, padding=1, bias=bias), nn.BatchNorm2d(32, momentum=momentum), nn.ReLU(),
               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 9, 64, bias=bias)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.BatchNorm1d(64, momentum=momentum), nn.ReLU(), nn.Linear(64, CLASSES)]
    return nn.Sequential(*layers)


def wrong_setup() -> nn.Sequential:
    """Keras momentum, dropout before batch norm, biases before batch norm (train it with tiny batches)."""
    return _net(momentum=0.99, dropout=0.5, bias=True)


def right_setup() -> nn.Sequential:
    return _net(momentum=0.1, dropout=0.0, bias=False)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, epochs: int, lr: float) -> None:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            if len(idx) < 2:
                continue
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/doctor_demo")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small layers: more threads only add contention on a shared machine
    gen = torch.Generator().manual_seed(0)
    x, y = make_data(6000, gen)
    x_train, y_train, x_test, y_test = x[:5000], y[:5000], x[5000:], y[5000:]
    np.savez(out / "test.npz", x=x_test.numpy(), y=y_test.numpy())
    setups = (("wrong", wrong_setup, WRONG_BATCH, 1, 0.005), ("right", right_setup, RIGHT_BATCH, 2, 0.1))
    for name, factory, batch, epochs, lr in setups:
        torch.manual_seed(0)
        model = factory()
        start = time.perf_counter()
        train(model, x_train, y_train, batch, epochs, lr)
        torch.save(model.state_dict(), out / f"{name}.pt")
        print(f"=== {name} setup: trained in {time.perf_counter() - start:.0f} s with batches of {batch}")
        print(f"$ bnlab doctor --model examples.doctor_demo:{factory.__name__} --weights {out / name}.pt "
              f"--data {out / 'test.npz'} --batch-size {batch}")
        batches = list(zip(x_test.split(batch), y_test.split(batch), strict=True))
        print(bnlab.tools.doctor(model, batches))
        print()


if __name__ == "__main__":
    main()
