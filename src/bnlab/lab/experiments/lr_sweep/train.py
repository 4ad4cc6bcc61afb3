"""E6's networks and units of work: one training per learning rate and network, and the landscape measurements.

The network is EXPERIMENTS.md §7.C's: 784 → ``depth`` × ``width`` → 10, ReLU, He-normal weights (Keras's
``he_normal`` from :mod:`bnlab.init`: variance 2 / fan_in, the output layer too), biases 0. The BN network puts a
bnlab ``BatchNorm1d`` between each hidden linear layer (without its bias, which β replaces) and its ReLU. Within a
seed every run starts from the same weights (the plain network's, copied into the BN network) and sees the same
mini-batches, so the runs differ only in the learning rate and in batch norm.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.lr_sweep.config import MODELS, LrSweepConfig, alphas
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import LossAlongDirection, Stepper, batches, check_finite, run_steps

__all__ = ["Data", "build_pair", "load", "prepare", "prepare_pixels", "steps_of", "train"]

Data = tuple[Tensor, Tensor, Tensor, Tensor, int]  # x_train, y_train, x_test, y_test, classes
PIXEL_STD_FLOOR = 1e-3  # per-pixel standardization divides by std + this (EXPERIMENTS.md §7.B's calibration)


def prepare_pixels(x_train: Tensor, x_test: Tensor, pixels: str) -> tuple[Tensor, Tensor]:
    """Flatten (N, C, H, W) images in [0, 1] to (N, C·H·W) and scale them as ``pixels`` says, with the training
    set's statistics: ``global`` (one mean and one std), ``pixel`` (each pixel's, std + 1e-3) or ``raw``."""
    a, b = x_train.flatten(1), x_test.flatten(1)
    if pixels == "global":
        mean, std = a.mean(), a.std()
        return (a - mean) / std, (b - mean) / std
    if pixels == "pixel":
        mean, std = a.mean(0), a.std(0) + PIXEL_STD_FLOOR
        return (a - mean) / std, (b - mean) / std
    return a, b


def load(config: LrSweepConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> Data:
    """The training set (its first ``train_size`` images, if set) and the test set, scaled, on ``device``; kept
    in ``cache`` for the run's other units."""
    key = f"lr_sweep-{config.dataset}-{config.pixels}-{config.train_size}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        check_finite(data.x_train, f"the {config.dataset} training images")  # before scaling spreads a NaN
        check_finite(data.x_test, f"the {config.dataset} test images")
        x_train, y_train = data.x_train, data.y_train
        if config.train_size:
            if config.train_size > len(x_train):
                raise RunSetupError(f"train_size={config.train_size:,} is more than the {len(x_train):,} training "
                                    f"images of {config.dataset}")
            x_train, y_train = x_train[: config.train_size], y_train[: config.train_size]
        a, b = prepare_pixels(x_train, data.x_test, config.pixels)
        cache[key] = (a.contiguous().to(device), y_train.to(device), b.contiguous().to(device),
                      data.y_test.to(device), data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def steps_of(config: LrSweepConfig, train_images: int) -> int:
    """Optimizer steps of one run: ``epochs`` × the full batches in the training set (the last partial one is
    dropped, as :func:`bnlab.lab.train.batches` does)."""
    return config.epochs * (train_images // config.batch_size)


def prepare(config: LrSweepConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, that the data loads and is large enough and that the batch-norm
    backend runs on ``device``; RunSetupError or FileNotFoundError otherwise."""
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}; drop --data-dir, or add --set dataset=fashion-mnist")
    if "bn" in config.models:
        try:
            bnlab.kernels.resolve(config.backend, device, torch.float32)
        except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
            raise RunSetupError(str(err)) from None
    try:
        x_train = load(config, device, data_dir, cache)[0]
    except RunSetupError:
        raise
    except ValueError as err:  # a corrupt file (a missing one is a FileNotFoundError)
        raise RunSetupError(str(err)) from None
    if config.batch_size > len(x_train):
        raise RunSetupError(f"batch_size {config.batch_size} is more than the {len(x_train):,} training images")
    if steps_of(config, len(x_train)) <= max(config.landscape_updates, default=0):
        raise RunSetupError(f"the landscape is measured after {max(config.landscape_updates)} updates, more than "
                            f"the {steps_of(config, len(x_train))} steps of a run; lower landscape_updates")


def _mlp(config: LrSweepConfig, inputs: int, classes: int, batch_norm: bool) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = inputs
    for _ in range(config.depth):
        layers.append(torch.nn.Linear(width, config.width, bias=not batch_norm))  # β replaces the bias
        if batch_norm:
            layers.append(bnlab.BatchNorm1d(config.width, momentum=config.bn_momentum, backend=config.backend))
        layers.append(torch.nn.ReLU())
        width = config.width
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def build_pair(config: LrSweepConfig, inputs: int, classes: int, seed: int) -> dict[str, torch.nn.Sequential]:
    """The plain and the BN network with the same He-normal weights, drawn from a generator seeded by ``seed``
    alone (so every unit of a seed draws the same ones), biases 0."""
    plain = _mlp(config, inputs, classes, False)
    bn = _mlp(config, inputs, classes, True)
    # Python's hash of text is salted per process; crc32 gives the same seed in every process.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(b"lr_sweep")) % 2**63)
    bnlab.init.apply_(plain, "he_normal", generator=generator)
    with torch.no_grad():
        pairs = zip((m for m in bn if isinstance(m, torch.nn.Linear)),
                    (m for m in plain if isinstance(m, torch.nn.Linear)), strict=True)
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                dst.bias.copy_(src.bias)  # (zero) the output layer's bias
    return {"plain": plain, "bn": bn}


def _g5(value: float) -> float:
    return float(f"{value:.5g}")  # five significant digits are plenty for a loss curve, and keep records small


def _accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> float | None:
    """Test accuracy in eval mode (running statistics), or None when the weights are not finite."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return None
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return round(correct, 6)


def _sweep_run(config: LrSweepConfig, ctx: RunContext, data: Data, name: str, lr: float) -> None:
    """Train network ``name`` at ``lr`` for one epoch (or ``epochs``), stopping early once its loss is not finite."""
    x_train, y_train, x_test, y_test, classes = data
    model = build_pair(config, x_train.shape[1], classes, ctx.seed)[name].to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps = steps_of(config, len(x_train))
    losses = torch.full((steps,), math.nan, device=ctx.device)  # every step's loss, read back once at the end

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> dict[str, Tensor]:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        stepper.optimize(name, model, optimizer, loss)
        losses[stepper.step - 1] = loss.detach()
        return {"loss": loss.detach()}

    stream = batches((x_train, y_train), config.batch_size, torch.Generator().manual_seed(ctx.seed))
    result = run_steps(step, stream, steps=steps, models=[model],
                       eval_steps=range(config.check_every, steps + 1, config.check_every), progress=ctx.progress,
                       desc=f"lr_sweep seed {ctx.seed} {name} lr {lr:g}")
    done = losses[: result.steps].double().cpu()
    finite = torch.isfinite(done)
    diverged_at = None if bool(finite.all()) else int(torch.nonzero(~finite)[0]) + 1
    final = None
    if diverged_at is None:
        final = float(done[-min(config.final_window, len(done)):].mean())
    ctx.log({"kind": "run", "seed": ctx.seed, "model": name, "lr": lr, "steps": result.steps, "planned_steps": steps,
             "losses": [_g5(v) for v in done.tolist()], "final_loss": None if final is None else _g5(final),
             "test_accuracy": _accuracy(model, x_test, y_test),
             "diverged": diverged_at is not None or final is None or final > config.diverged_loss,
             "diverged_at": diverged_at, "seconds": round(result.seconds, 3)})


def _landscape(config: LrSweepConfig, ctx: RunContext, data: Data, name: str) -> None:
    """L(w − αg)/L(w) over α on the step's own batch, after each of ``landscape_updates`` plain SGD updates at
    ``landscape_lr`` (the measurement comes before that step's own update)."""
    x_train, y_train, _, _, classes = data
    model = build_pair(config, x_train.shape[1], classes, ctx.seed)[name].to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.landscape_lr)
    probe = LossAlongDirection(lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]), alphas(config),
                               steps={u + 1 for u in config.landscape_updates})

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> dict[str, Tensor]:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        stepper.optimize(name, model, optimizer, loss)
        return {"loss": loss.detach()}

    stream = batches((x_train, y_train), config.batch_size, torch.Generator().manual_seed(ctx.seed))
    run_steps(step, stream, steps=max(config.landscape_updates) + 1, models=[model], hooks=[probe],
              progress=False)
    for r in probe.results():
        ctx.log({"kind": "landscape", "seed": ctx.seed, "model": name, "updates": r["step"] - 1,
                 "lr": config.landscape_lr, "alphas": r["alphas"], "ratios": [_g5(v) for v in r["ratios"]]})


def train(config: LrSweepConfig, ctx: RunContext) -> None:
    """One unit: a training at ``ctx.unit["lr"]`` of network ``ctx.unit["model"]``, or the landscape of network
    ``ctx.unit["landscape"]``."""
    data = load(config, ctx.device, ctx.data_dir, ctx.cache)
    if "landscape" in ctx.unit:
        _landscape(config, ctx, data, ctx.unit["landscape"])
        return
    if ctx.unit["model"] not in MODELS:
        raise ValueError(f"unknown network {ctx.unit['model']!r}")
    _sweep_run(config, ctx, data, ctx.unit["model"], float(ctx.unit["lr"]))
