"""E3's data and units of work: one network trained as Géron trains it, logged as Keras logs it; the diagnostic.

Data: Fashion-MNIST's training file split as HOML3 does (the first 55,000 images train, the last 5,000
validate), the 10,000 test images apart; every pixel standardized with the mean and standard deviation of the
55,000 training images (a pixel that never varies would divide by 0: it is divided by 1, as scikit-learn's
StandardScaler does). With ``train_size`` the run trains on the first N of the 55,000 (the statistics stay the
55,000's).

Per epoch the run logs what Keras's ``fit`` prints: ``loss`` and ``accuracy``, the means over the epoch's
mini-batches in training mode (each batch scored by the weights before its own update), and ``val_loss`` and
``val_accuracy`` on the 5,000 validation images at the epoch's end (eval mode: batch norm's running statistics,
no dropout). Keras also trains on the last partial batch (1,719 steps an epoch); here an epoch is the 1,718 full
batches (:func:`bnlab.lab.train.batches` drops the remainder).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.selu_deep.config import SeluDeepConfig
from bnlab.lab.experiments.selu_deep.nets import build, forward_stats, gradient_ratios
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import Stepper, batches, check_finite, run_steps

__all__ = ["Data", "generator_for", "load", "prepare", "standardize", "steps_per_epoch", "train"]

Data = dict[str, Any]  # x_train, y_train, x_val, y_val, x_test, y_test (images (N, 1, H, W)), classes


def standardize(x_train: Tensor, *others: Tensor) -> list[Tensor]:
    """Each of ``x_train`` and ``others`` standardized per pixel with ``x_train``'s mean and standard deviation
    (population std, as NumPy's; a pixel with std 0 is divided by 1)."""
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(t - mean) / std for t in (x_train, *others)]


def load(config: SeluDeepConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> Data:
    """The standardized splits on ``device``, kept in ``cache`` for the run's other units."""
    key = f"selu_deep-{config.dataset}-{config.validation}-{config.train_size}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir, validation=config.validation)
        for split in ("train", "validation", "test"):
            check_finite(data.split(split)[0], f"the {config.dataset} {split} images")  # before standardizing
        x_train, x_val, x_test = standardize(data.x_train, data.x_val, data.x_test)
        y_train = data.y_train
        if config.train_size:
            if config.train_size > len(x_train):
                raise RunSetupError(f"train_size={config.train_size:,} is more than the {len(x_train):,} training "
                                    f"images left after the validation split")
            x_train, y_train = x_train[: config.train_size], y_train[: config.train_size]
        cache[key] = {"x_train": x_train.contiguous().to(device), "y_train": y_train.to(device),
                      "x_val": x_val.to(device), "y_val": data.y_val.to(device), "x_test": x_test.to(device),
                      "y_test": data.y_test.to(device), "classes": data.num_classes}
    return cache[key]  # type: ignore[no-any-return]


def steps_per_epoch(config: SeluDeepConfig, train_images: int) -> int:
    return train_images // config.batch_size


def prepare(config: SeluDeepConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, the data (installed, finite, large enough) and the batch-norm
    backend; RunSetupError or FileNotFoundError otherwise."""
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}; drop --data-dir, or add --set dataset=fashion-mnist")
    if "relu_bn" in config.models:
        try:
            bnlab.kernels.resolve(config.backend, device, torch.float32)
        except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
            raise RunSetupError(str(err)) from None
    try:
        data = load(config, device, data_dir, cache)
    except RunSetupError:
        raise
    except ValueError as err:  # a corrupt file, or a validation split larger than the training set
        raise RunSetupError(str(err)) from None
    if config.batch_size > len(data["x_train"]):
        raise RunSetupError(f"batch_size {config.batch_size} is more than the {len(data['x_train']):,} training "
                            f"images")
    if config.diagnostic and config.diagnostic_samples > len(data["x_train"]):
        raise RunSetupError(f"diagnostic_samples={config.diagnostic_samples:,} is more than the "
                            f"{len(data['x_train']):,} training images")


def generator_for(seed: int, part: str) -> torch.Generator:
    """A generator seeded by the run's seed and what it draws for (a network's weights, the batch order)."""
    # Python's hash of text is salted per process; crc32 gives the same seed in every process.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(part.encode())) % 2**63)


def _round(value: float) -> float:
    return round(value, 6)


def _train_model(config: SeluDeepConfig, ctx: RunContext, data: Data, name: str) -> None:
    model = build(name, config, tuple(data["x_train"].shape[1:]), data["classes"], generator_for(ctx.seed, name))
    model.to(ctx.device)
    found = bnlab.summary(model, tuple(data["x_train"].shape[1:]))
    ctx.log({"kind": "summary", "seed": ctx.seed, "model": name, "rows": found.rows(collapse=True),
             "total": found.total, "trainable": found.trainable, "non_trainable": found.non_trainable,
             "counters": found.counters, "text": "\n".join(found.totals())})
    first = slice(0, config.batch_size)  # a fixed batch: the first training images
    ctx.log({"kind": "gradients", "seed": ctx.seed, "model": name,
             "ratios": gradient_ratios(model, data["x_train"][first], data["y_train"][first])})
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    per_epoch = steps_per_epoch(config, len(data["x_train"]))
    x_val, y_val = data["x_val"], data["y_val"]

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> dict[str, Tensor]:
        x, y = batch
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        stepper.optimize(name, model, optimizer, loss)
        return {"loss": loss.detach(), "accuracy": (logits.detach().argmax(1) == y).float().mean()}

    def evaluate() -> dict[str, Any]:
        logits = model(x_val)
        return {"val_loss": torch.nn.functional.cross_entropy(logits, y_val).item(),
                "val_accuracy": (logits.argmax(1) == y_val).float().mean().item()}

    def on_eval(record: dict[str, Any]) -> None:
        ctx.log({"kind": "epoch", "seed": ctx.seed, "model": name, "epoch": record["step"] // per_epoch,
                 **{k: None if record[src] is None else _round(record[src]) for k, src in
                    (("loss", "train_loss"), ("accuracy", "train_accuracy"), ("val_loss", "val_loss"),
                     ("val_accuracy", "val_accuracy"))}})

    stream = batches((data["x_train"], data["y_train"]), config.batch_size, generator_for(ctx.seed, "batches"))
    steps = config.epochs * per_epoch
    result = run_steps(step, stream, steps=steps, models=[model],
                       eval_steps=[per_epoch * e for e in range(1, config.epochs + 1)], evaluate=evaluate,
                       on_eval=on_eval, progress=ctx.progress, desc=f"selu_deep seed {ctx.seed} {name}")
    test_accuracy = None
    if not result.diverged:
        model.eval()
        with torch.no_grad():
            test_accuracy = _round((model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item())
    ctx.log({"kind": "end", "seed": ctx.seed, "model": name, "steps": result.steps, "planned_steps": steps,
             "diverged": result.diverged, "test_accuracy": test_accuracy, "seconds": round(result.seconds, 2)})


def train(config: SeluDeepConfig, ctx: RunContext) -> None:
    """One unit: train network ``ctx.unit["model"]``, or measure the forward diagnostic at initialization."""
    data = load(config, ctx.device, ctx.data_dir, ctx.cache)
    if "model" in ctx.unit:
        _train_model(config, ctx, data, ctx.unit["model"])
        return
    x = data["x_train"][: config.diagnostic_samples].flatten(1)
    for network in config.diagnostic:
        mean, std = forward_stats(x, network, config.depth, config.width, generator_for(ctx.seed, f"diag-{network}"))
        ctx.log({"kind": "diagnostic", "seed": ctx.seed, "network": network, "mean": mean, "std": std})
