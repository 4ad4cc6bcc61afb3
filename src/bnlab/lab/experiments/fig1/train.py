"""Figure 1's networks and training: one unit of work per network, both from the same initial weights.

The network is the paper's: 784 → 100 → 100 → 100 → 10, sigmoid hidden units, weights from a small Gaussian,
softmax cross-entropy, mini-batches of 60, plain SGD at a fixed learning rate. The BN variant puts a bnlab
``BatchNorm1d`` before each sigmoid and drops the bias it makes redundant; both start from the same weights (the
runner seeds torch before each unit, and both units draw the pair) and see the same mini-batches. At each
evaluation step the run records the test accuracy (BN in eval mode, with its running statistics) and the
{15, 50, 85}th percentiles over the test set of the input of every sigmoid of the last hidden layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab import engine
from bnlab.lab.experiments.fig1.config import PERCENTILES, Fig1Config, eval_steps
from bnlab.lab.registry import RunContext, RunSetupError, Unit
from bnlab.lab.train import check_finite

__all__ = ["build_pair", "prepare", "prepare_pixels", "train", "units"]

def prepare_pixels(x_train: Tensor, x_test: Tensor, pixels: str) -> tuple[Tensor, Tensor]:
    """Flatten (N, 1, H, W) images in [0, 1] to (N, H·W) and scale them as ``pixels`` says."""
    a, b = x_train.flatten(1), x_test.flatten(1)
    if pixels == "centered":
        return a * 2 - 1, b * 2 - 1
    if pixels == "standardized":
        mean, std = a.mean(), a.std()  # one scalar each, from the training set only
        return (a - mean) / std, (b - mean) / std
    return a, b


def _mlp(inputs: int, hidden: int, classes: int, batch_norm: bool, config: Fig1Config) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = inputs
    for _ in range(3):
        layers.append(torch.nn.Linear(width, hidden, bias=not batch_norm))  # BN's β replaces the bias
        if batch_norm:
            layers.append(bnlab.BatchNorm1d(hidden, momentum=config.bn_momentum, backend=config.backend))
        layers.append(torch.nn.Sigmoid())
        width = hidden
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def build_pair(inputs: int, classes: int, config: Fig1Config) -> dict[str, torch.nn.Sequential]:
    """The baseline and the BN network with the same initial weights: N(0, init_std²), biases 0.

    Draws from torch's global generator (seed it first).
    """
    baseline = _mlp(inputs, config.hidden, classes, False, config)
    bn = _mlp(inputs, config.hidden, classes, True, config)
    with torch.no_grad():
        for layer in baseline:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, config.init_std)
                layer.bias.zero_()
        linears_bn = [m for m in bn if isinstance(m, torch.nn.Linear)]
        linears_base = [m for m in baseline if isinstance(m, torch.nn.Linear)]
        for dst, src in zip(linears_bn, linears_base, strict=True):
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                dst.bias.copy_(src.bias)
    return {"baseline": baseline, "bn": bn}


def _round(values: Tensor) -> list[float]:
    return [round(v, 5) for v in values.tolist()]


def _data(config: Fig1Config, device: torch.device, data_dir: str | None,
          cache: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_test, y_test, classes) on ``device``, pixels prepared; kept in ``cache`` for the seeds."""
    key = f"fig1-data-{config.dataset}-{config.pixels}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        # Checked before scaling: one NaN would turn the standardized set into NaN and hide where it was.
        check_finite(data.x_train, f"the {config.dataset} training images")
        check_finite(data.x_test, f"the {config.dataset} test images")
        x_train, x_test = prepare_pixels(data.x_train, data.x_test, config.pixels)
        cache[key] = (x_train.to(device), data.y_train.to(device), x_test.to(device), data.y_test.to(device),
                      data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def prepare(config: Fig1Config, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before a run folder is made, that the run can start, and load its data into ``cache``.

    Raises:
        RunSetupError: ``data_dir`` given for a data set that does not read one, a batch-norm backend that
            cannot run on ``device``, a data file that is corrupt or holds non-finite values, or a batch larger
            than the training set.
        FileNotFoundError: the data set is not installed (the message names the command that installs it).
    """
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}, which ships inside a Python package; drop --data-dir, or add "
                            f"--set dataset=fashion-mnist")
    try:  # the layers run in float32 on the device; an explicit backend (or $BNLAB_BACKEND) must run there
        bnlab.kernels.resolve(config.backend, device, torch.float32)
    except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
        raise RunSetupError(str(err)) from None
    try:
        x_train = _data(config, device, data_dir, cache)[0]
    except ValueError as err:  # a corrupt or inconsistent file (a missing one is a FileNotFoundError)
        raise RunSetupError(str(err)) from None
    if config.batch_size > len(x_train):
        raise RunSetupError(f"batch_size {config.batch_size} is more than the {len(x_train):,} training images of "
                            f"{config.dataset}")


def units(config: Fig1Config) -> list[Unit]:
    """One unit of work per network to train."""
    return [{"model": m} for m in config.models]


def train(config: Fig1Config, ctx: RunContext) -> None:
    """Train the network ``ctx.unit["model"]`` for one seed, logging one record per evaluation step, then an end
    record. The pair is drawn first, so both networks of a seed start from the same weights."""
    data = _data(config, ctx.device, ctx.data_dir, ctx.cache)
    pair = build_pair(data[0].shape[1], data[4], config)
    name = ctx.unit["model"]
    train_one(config, ctx, name, pair[name], data)


def train_one(config: Fig1Config, ctx: RunContext, name: str, model: torch.nn.Module,
              data: tuple[Tensor, Tensor, Tensor, Tensor, int]) -> None:
    x_train, y_train, x_test, y_test, _ = data
    model.to(ctx.device)
    last_sigmoid = [m for m in model.modules() if isinstance(m, torch.nn.Sigmoid)][-1]
    q = torch.tensor([p / 100 for p in PERCENTILES], device=ctx.device)

    def evaluate(model: torch.nn.Module) -> dict[str, Any]:
        captured: dict[str, Tensor] = {}
        # Hooked only while evaluating: a hook left on would cost a Python call on every training step.
        handle = last_sigmoid.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0]))
        try:
            logits = model(x_test)
        finally:
            handle.remove()
        accuracy = (logits.argmax(1) == y_test).float().mean()
        quantiles = torch.quantile(captured["x"].float(), q, dim=0)  # (3, hidden): per unit, over the test set
        out: dict[str, Any] = {"test_accuracy": round(accuracy.item(), 6)}
        for p, row in zip(PERCENTILES, quantiles, strict=True):
            out[f"p{p}"] = _round(row)
        return out

    def log(record: dict[str, Any]) -> None:
        ctx.log({"kind": "eval", "seed": ctx.seed, "model": name, **record})

    optimizer = engine.make_optimizer(model.parameters(), "sgd", config.lr)
    result = engine.train(model, x_train, y_train, optimizer, steps=config.steps, batch_size=config.batch_size,
                          seed=ctx.seed, eval_steps=eval_steps(config), evaluate=evaluate, on_eval=log,
                          data_name=f"the {config.dataset} training images", progress=ctx.progress,
                          desc=f"fig1 seed {ctx.seed} {name}")
    ctx.log({"kind": "end", "seed": ctx.seed, "model": name, "steps": result.steps, "diverged": result.diverged,
             "seconds": round(result.seconds, 2)})
