"""A stand-alone example of bnlab without the lab: train a small network with bnlab's batch norm, say what happened.

Run with ``.venv/bin/python examples/demo.py``. It trains the same sigmoid MLP twice on a synthetic 10-class
problem (with and without batch norm, from the same initial weights), then shows that the bnlab layers are
drop-in: converting the trained model to torch's modules changes no output.
"""

from __future__ import annotations

import time

import torch

import bnlab


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """10 Gaussian clusters in 20 dimensions with an offset and scale that make unnormalized training slow."""
    centers = torch.randn(10, 20, generator=generator) * 0.6
    labels = torch.randint(0, 10, (n,), generator=generator)
    x = centers[labels] + torch.randn(n, 20, generator=generator)
    return x * 8.0 + 4.0, labels


def make_model(batch_norm: bool) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = 20
    for _ in range(3):
        layers.append(torch.nn.Linear(width, 64, bias=not batch_norm))
        if batch_norm:
            layers.append(bnlab.BatchNorm1d(64))
        layers.append(torch.nn.Sigmoid())
        width = 64
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


REPORT_STEPS = (50, 100, 200, 500, 1500)


def train(model: torch.nn.Module, data: tuple[torch.Tensor, ...], steps: int, lr: float) -> list[float]:
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    curve = []
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(0, len(x_train), (60,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in REPORT_STEPS:
            curve.append(accuracy(model, x_test, y_test))
    return curve


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = make_data(6000, gen)
    data = (x[:5000], y[:5000], x[5000:], y[5000:])
    steps = 1500
    print(f"bnlab {bnlab.__version__}: backends on cpu/float32 = {bnlab.available_backends('cpu')}")
    print(f"training a 20-64-64-64-10 sigmoid MLP for {steps} SGD steps (batch 60) on synthetic data\n")

    print("test accuracy after " + "  ".join(f"{s:>5d}" for s in REPORT_STEPS) + " steps")
    results = {}
    for name, use_bn in (("baseline", False), ("bnlab BN", True)):
        torch.manual_seed(0)
        model = make_model(use_bn)
        start = time.perf_counter()
        curve = train(model, data, steps, lr=0.5)
        seconds = time.perf_counter() - start
        results[name] = model
        points = "  ".join(f"{acc:5.1%}" for acc in curve)
        print(f"{name:9s} {points}   ({seconds:.1f} s)")

    bn_model = results["bnlab BN"]
    bn_model.eval()
    as_torch = bnlab.convert(bn_model, to="torch")
    with torch.no_grad():
        same = torch.equal(bn_model(data[2]), as_torch(data[2]))
    first_bn = bn_model[1]
    print(f"\nfirst BN layer: {first_bn}")
    print(f"  running mean (first 4) {first_bn.running_mean[:4].tolist()}")
    print(f"  batches tracked        {int(first_bn.num_batches_tracked)}")
    print(f"converted to torch.nn.BatchNorm1d: outputs bit-identical = {same}")


if __name__ == "__main__":
    main()
