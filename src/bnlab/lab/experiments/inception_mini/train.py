"""E1b's units of work: one variant of Figure 3 trained for one seed, its accuracy measured on a fixed step grid.

Every variant of a seed starts from the same weights where the shapes allow it (same activation: the generator
is seeded with the seed, and BN adds nothing to draw) and sees the same mini-batches in the same order; only the
dropout masks differ with the variant. SGD with momentum on the mean cross-entropy, L2 weight decay on the
convolution and classifier weights (not on biases or BN's γ, β), the learning rate set at every step from the
variant's exponential decay. At each step of the evaluation grid the run records the accuracy on the held-out
validation images (BN in eval mode, with its running statistics), the mean training loss since the last
evaluation, the learning rate and the norm of all weights (which shows a run heading for "machine infinity").
A variant whose mean training loss stops being finite stops there: it has diverged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.inception_mini.config import VARIANTS, Hyper, InceptionConfig, eval_steps, hyper
from bnlab.lab.experiments.inception_mini.nets import MiniInception, initialize
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import Hook, batches, check_finite, run_steps, supervised_step

__all__ = ["EVAL_CHUNK", "ExponentialDecay", "batch_stream", "build", "optimizer_for", "prepare", "train",
           "validation_accuracy", "weight_norm"]

EVAL_CHUNK = 1_000  # validation images per forward pass (bounds the memory of an evaluation)

Data = tuple[Tensor, Tensor, Tensor, Tensor, int]


class ExponentialDecay(Hook):
    """Sets the learning rate of every parameter group of ``optimizer`` before each step, from ``hyper.lr_at``."""

    def __init__(self, optimizer: torch.optim.Optimizer, hyper: Hyper) -> None:
        self.optimizer, self.hyper = optimizer, hyper
        self.lr = hyper.lr_at(1)

    def start_step(self, step: int) -> None:
        self.lr = self.hyper.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr


def _data(config: InceptionConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> Data:
    """(x_train, y_train, x_val, y_val, classes) on ``device``, images standardized with one mean and one standard
    deviation of the training images; kept in ``cache`` for every unit of the run."""
    key = f"inception_mini-data-{config.dataset}-{config.validation}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir, validation=config.validation)
        # Checked before standardizing, which would spread one NaN over every image.
        check_finite(data.x_train, f"the {config.dataset} training images")
        check_finite(data.x_val, f"the {config.dataset} validation images")
        mean, std = data.x_train.mean(), data.x_train.std()
        cache[key] = (((data.x_train - mean) / std).to(device), data.y_train.to(device),
                      ((data.x_val - mean) / std).to(device), data.y_val.to(device), data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def prepare(config: InceptionConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, that the run can start, and load its data into ``cache``.

    Raises:
        RunSetupError: ``data_dir`` for a data set that reads none, a batch-norm backend that cannot run on
            ``device``, a corrupt data file or one with non-finite values, a validation set that leaves no
            training image, images that are not 28×28, or a batch larger than the training set.
        FileNotFoundError: the data set is not installed (the message names the command that installs it).
    """
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}, which ships inside a Python package; drop --data-dir")
    if any(VARIANTS[v].batch_norm for v in config.variants):
        try:
            bnlab.kernels.resolve(config.backend, device, torch.float32)
        except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
            raise RunSetupError(str(err)) from None
    try:
        x_train = _data(config, device, data_dir, cache)[0]
    except ValueError as err:  # a corrupt file, non-finite values, a validation set that takes every image
        raise RunSetupError(str(err)) from None
    if tuple(x_train.shape[2:]) != (28, 28):
        raise RunSetupError(f"the mini Inception takes 28×28 images; {config.dataset} has "
                            f"{tuple(x_train.shape[2:])}")
    if config.batch_size > len(x_train):
        raise RunSetupError(f"batch_size {config.batch_size} is more than the {len(x_train):,} training images of "
                            f"{config.dataset} (after holding out {config.validation:,} for validation)")


def build(config: InceptionConfig, name: str, classes: int, seed: int) -> MiniInception:
    """The variant ``name``'s network, its weights drawn from a generator seeded with ``seed``."""
    v, h = VARIANTS[name], hyper(config, name)
    model = MiniInception(config.width, classes, v.activation, v.batch_norm, h.dropout, h.lrn,
                          bn_momentum=config.bn_momentum, backend=config.backend)
    initialize(model, v.activation, torch.Generator().manual_seed(seed))
    return model


def validation_accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    """The share of ``x`` classified as ``y``, in chunks of :data:`EVAL_CHUNK`; a row of logits that is not
    finite counts as wrong (the argmax of a NaN row would name class 0 and score it by chance)."""
    correct = 0
    for start in range(0, len(x), EVAL_CHUNK):
        logits = model(x[start:start + EVAL_CHUNK])
        right = (logits.argmax(1) == y[start:start + EVAL_CHUNK]) & torch.isfinite(logits).all(1)
        correct += int(right.sum())
    return correct / len(x)


def optimizer_for(model: torch.nn.Module, config: InceptionConfig, h: Hyper) -> torch.optim.Optimizer:
    """SGD with momentum; L2 weight decay on the weights of convolutions and the classifier only."""
    decayed = [p for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for p in [m.weight]]
    ids = {id(p) for p in decayed}
    others = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": decayed, "weight_decay": h.weight_decay},
                            {"params": others, "weight_decay": 0.0}], lr=h.lr, momentum=config.momentum)


def weight_norm(model: torch.nn.Module) -> float | None:
    """The Euclidean norm of all of ``model``'s parameters, summed in float64; None when it is not finite."""
    norm = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
    return norm if math.isfinite(norm) else None


def batch_stream(x: Tensor, y: Tensor, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (images, labels) batches in the order ``batches`` gives for ``seed`` (a fresh permutation each
    epoch), gathered per batch: the data were checked once when loaded, and a short run should not copy the whole
    training set to permute it (``engine.train`` does both for every unit)."""
    for (index,) in batches((torch.arange(len(x), device=x.device),), batch_size, torch.Generator().manual_seed(seed)):
        yield x[index], y[index]


def train(config: InceptionConfig, ctx: RunContext) -> None:
    """Train the variant ``ctx.unit["variant"]`` for one seed: an ``eval`` record per evaluation step, then an
    ``end`` record."""
    name = ctx.unit["variant"]
    x_train, y_train, x_val, y_val, classes = _data(config, ctx.device, ctx.data_dir, ctx.cache)
    h = hyper(config, name)
    model = build(config, name, classes, ctx.seed).to(ctx.device)
    optimizer = optimizer_for(model, config, h)
    decay = ExponentialDecay(optimizer, h)

    def evaluate(model: torch.nn.Module) -> dict[str, Any]:
        return {"val_accuracy": round(validation_accuracy(model, x_val, y_val), 6), "lr": decay.lr,
                "weight_norm": weight_norm(model)}

    def log(record: dict[str, Any]) -> None:
        ctx.log({"kind": "eval", "seed": ctx.seed, "variant": name, **record})

    stream = batch_stream(x_train, y_train, config.batch_size, ctx.seed)
    result = run_steps(supervised_step(model, optimizer), stream, steps=config.steps, models=[model],
                       eval_steps=eval_steps(config), evaluate=lambda: evaluate(model), on_eval=log, hooks=[decay],
                       progress=ctx.progress, desc=f"inception_mini seed {ctx.seed} {name}")
    ctx.log({"kind": "end", "seed": ctx.seed, "variant": name, "steps": result.steps, "diverged": result.diverged,
             "seconds": round(result.seconds, 2)})
