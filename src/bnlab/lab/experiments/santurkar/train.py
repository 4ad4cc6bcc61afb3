"""E2's units of work: one network trained per unit, with the probes of the three parts riding along.

Every CNN variant of a seed starts from the same weights (drawn from a generator seeded by the seed, so a unit
draws them alone) and sees the same mini-batches; so do the two DLNs. A CNN unit records, at each evaluation,
the training loss and accuracy (train mode, the mean over the steps since the last evaluation) and the test
accuracy (eval mode); at the traced steps, the {15, 50, 85}th percentiles of one unit's pre-activation (over the
batch and every spatial position, in the training forward pass, noise included) in two layers. The runs of
Standard and of BN at Standard's learning rate (:func:`~bnlab.lab.experiments.santurkar.config.probed`) also
carry :class:`~bnlab.lab.train.CovariateShiftProbe` (part b) and :class:`~bnlab.lab.train.LandscapeProbe`
(part c); the DLN runs carry the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.santurkar.config import (
    PERCENTILES,
    SanturkarConfig,
    cnn_lr,
    ics_steps,
    landscape_steps,
    probed,
    trace_steps,
)
from bnlab.lab.experiments.santurkar.nets import cnn, dln, layer_parameters, preactivation, shared_weights
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import (
    ActivationProbe,
    CovariateShiftProbe,
    Hook,
    LandscapeProbe,
    Stepper,
    batches,
    check_finite,
    make_optimizer,
    run_steps,
)

__all__ = ["dln_data", "prepare", "train"]

EVAL_CHUNK = 1000  # test images per forward pass at an evaluation (bounds the memory of the first conv layers)


def _images(config: SanturkarConfig, device: torch.device, data_dir: str | None,
            cache: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(x_train, y_train, x_test, y_test, classes) on ``device``: pixels standardized with one mean and one
    standard deviation of the training set, the first ``test_samples`` test images; kept in ``cache``."""
    key = f"santurkar-{config.dataset}-{config.test_samples}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        check_finite(data.x_train, f"the {config.dataset} training images")  # before scaling spreads a NaN
        check_finite(data.x_test, f"the {config.dataset} test images")
        mean, std = data.x_train.mean(), data.x_train.std()
        x_test = data.x_test[: config.test_samples]
        cache[key] = (((data.x_train - mean) / std).to(device), data.y_train.to(device),
                      ((x_test - mean) / std).to(device), data.y_test[: config.test_samples].to(device),
                      data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def prepare(config: SanturkarConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, that the run can start: the batch-norm backend on ``device``, the
    images (when a CNN is trained) and their sizes; RunSetupError or FileNotFoundError otherwise."""
    if data_dir is not None and not (config.variants and config.dataset in DATA_DIR_NAMES):
        raise RunSetupError(f"--data-dir is read only for the CNN's images of {', '.join(DATA_DIR_NAMES)}; this "
                            f"run does not read one")
    try:
        bnlab.kernels.resolve(config.backend, device, torch.float32)
    except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
        raise RunSetupError(str(err)) from None
    if not config.variants:
        return
    try:
        x_train = _images(config, device, data_dir, cache)[0]
    except ValueError as err:  # a corrupt file, non-finite values
        raise RunSetupError(str(err)) from None
    if config.batch_size > len(x_train):
        raise RunSetupError(f"batch_size {config.batch_size} is more than the {len(x_train):,} training images of "
                            f"{config.dataset}")
    if x_train.shape[-1] < 8 or x_train.shape[-1] != x_train.shape[-2]:
        raise RunSetupError(f"the CNN takes square images of at least 8×8 (three 2×2 pools), got "
                            f"{tuple(x_train.shape[-2:])}")


def dln_data(config: SanturkarConfig, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(x, y) of the deep linear network: ``dln_samples`` rows x ~ N(0, I) of ``dln_width`` values and y = A·x,
    A with N(0, 1/width) entries; all drawn from a generator seeded by ``seed`` (the same for both DLNs)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(config.dln_width, config.dln_width, generator=g) / math.sqrt(config.dln_width)
    x = torch.randn(config.dln_samples, config.dln_width, generator=g)
    return x.to(device), (x @ a.T).to(device)


def _cross_entropy(output: Tensor, batch: tuple[Tensor, ...]) -> Tensor:
    return torch.nn.functional.cross_entropy(output, batch[1])


def _mse(output: Tensor, batch: tuple[Tensor, ...]) -> Tensor:
    return torch.nn.functional.mse_loss(output, batch[1])


def _classifier_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """The CNN's step: cross-entropy, one update; returns the loss and the batch's accuracy (train mode)."""
    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        x, y = batch
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        stepper.optimize("model", model, optimizer, loss)
        return {"loss": loss.detach(), "accuracy": (logits.detach().argmax(1) == y).float().mean()}
    return step


def _regression_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        loss = _mse(model(batch[0]), batch)
        stepper.optimize("model", model, optimizer, loss)
        return {"loss": loss.detach()}
    return step


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _finites(values: list[float]) -> list[float | None]:
    return [_finite(v) for v in values]


def train(config: SanturkarConfig, ctx: RunContext) -> None:
    """Train the network of ``ctx.unit`` (``{"net": "cnn" | "dln", "variant": ...}``) for one seed."""
    if ctx.unit["net"] == "cnn":
        _train_cnn(config, ctx, ctx.unit["variant"])
    else:
        _train_dln(config, ctx, ctx.unit["variant"])


def _log_probes(ctx: RunContext, net: str, variant: str, ics: CovariateShiftProbe | None,
                landscape: LandscapeProbe | None) -> None:
    base = {"seed": ctx.seed, "net": net, "variant": variant}
    for row in ics.results() if ics is not None else []:
        ctx.log({"kind": "ics", **base, "step": row["step"], "layers": row["layers"], "l2": _finites(row["l2"]),
                 "grad_norm": _finites(row["grad_norm"]), "cosine": _finites(row["cosine"])})
    for row in landscape.results() if landscape is not None else []:
        ctx.log({"kind": "landscape", **base, "step": row["step"], "loss": _finite(row["loss"]),
                 "grad_norm": _finite(row["grad_norm"]), "losses": _finites(row["losses"]),
                 "grad_changes": _finites(row["grad_changes"])})


def _train_cnn(config: SanturkarConfig, ctx: RunContext, variant: str) -> None:
    x_train, y_train, x_test, y_test, classes = _images(config, ctx.device, ctx.data_dir, ctx.cache)
    model = cnn(config.channels, config.fc, classes, batch_norm=variant in ("bn", "bn_noise", "bn_same_lr"),
                noise=variant in ("noise", "bn_noise"), image_size=x_train.shape[-1], in_channels=x_train.shape[1],
                noise_mean=config.noise_mean, noise_scale=config.noise_scale, backend=config.backend)
    shared_weights([model], torch.Generator().manual_seed(ctx.seed))
    model.to(ctx.device)
    optimizer = make_optimizer(model.parameters(), "momentum", cnn_lr(config, variant), momentum=config.momentum)
    trace = ActivationProbe({f"layer{k}": preactivation(model, k) for k in config.trace_layers}, trace_steps(config),
                            unit=config.unit, quantiles=[p / 100 for p in PERCENTILES])
    hooks: list[Hook] = [trace]
    ics = landscape = None
    if variant in probed(config):
        ics = CovariateShiftProbe(_cross_entropy, layer_parameters(model), landscape_steps(config))
        landscape = LandscapeProbe(_cross_entropy, config.etas, landscape_steps(config))
        hooks += [ics, landscape]

    def evaluate() -> dict[str, Any]:
        if not len(x_test):
            return {"test_accuracy": None}
        correct = sum(int((model(x_test[i:i + EVAL_CHUNK]).argmax(1) == y_test[i:i + EVAL_CHUNK]).sum())
                      for i in range(0, len(x_test), EVAL_CHUNK))
        return {"test_accuracy": round(correct / len(x_test), 6)}

    def log(record: dict[str, Any]) -> None:
        accuracy = record.get("train_accuracy")
        ctx.log({"kind": "eval", "seed": ctx.seed, "net": "cnn", "variant": variant, "step": record["step"],
                 "train_loss": _finite(record["train_loss"]) if record["train_loss"] is not None else None,
                 "train_accuracy": accuracy, "test_accuracy": record["test_accuracy"]})

    evals = sorted({0, *range(config.eval_every, config.steps + 1, config.eval_every), config.steps})
    try:
        result = run_steps(_classifier_step(model, optimizer),
                           batches((x_train, y_train), config.batch_size, torch.Generator().manual_seed(ctx.seed)),
                           steps=config.steps, models=[model], eval_steps=evals, evaluate=evaluate, on_eval=log,
                           hooks=hooks, progress=ctx.progress, desc=f"santurkar seed {ctx.seed} cnn {variant}")
    finally:
        trace.close()
    rows = trace.results()
    for k in config.trace_layers:
        mine = [r for r in rows if r["module"] == f"layer{k}"]
        quantiles = [r["quantiles"] for r in mine]
        ctx.log({"kind": "trace", "seed": ctx.seed, "variant": variant, "layer": k, "steps": [r["step"] for r in mine],
                 **{f"p{p}": _finites([round(q[i], 5) for q in quantiles]) for i, p in enumerate(PERCENTILES)}})
    _log_probes(ctx, "cnn", variant, ics, landscape)
    ctx.log({"kind": "end", "seed": ctx.seed, "net": "cnn", "variant": variant, "steps": result.steps,
             "diverged": result.diverged, "seconds": round(result.seconds, 2)})


def _train_dln(config: SanturkarConfig, ctx: RunContext, variant: str) -> None:
    x, y = dln_data(config, ctx.seed, ctx.device)
    model = dln(config.dln_depth, config.dln_width, batch_norm=variant == "bn", backend=config.backend)
    shared_weights([model], torch.Generator().manual_seed(ctx.seed), init="orthogonal")
    model.to(ctx.device)
    optimizer = make_optimizer(model.parameters(), "sgd", config.dln_lr)
    ics = CovariateShiftProbe(_mse, layer_parameters(model), ics_steps(config, "dln"))

    def log(record: dict[str, Any]) -> None:
        loss = record["train_loss"]
        ctx.log({"kind": "eval", "seed": ctx.seed, "net": "dln", "variant": variant, "step": record["step"],
                 "train_loss": None if loss is None else _finite(loss), "train_accuracy": None,
                 "test_accuracy": None})

    every = max(1, config.dln_steps // 20)
    evals = sorted({0, *range(every, config.dln_steps + 1, every), config.dln_steps})
    result = run_steps(_regression_step(model, optimizer),
                       batches((x, y), config.dln_batch_size, torch.Generator().manual_seed(ctx.seed)),
                       steps=config.dln_steps, models=[model], eval_steps=evals, on_eval=log, hooks=[ics],
                       progress=ctx.progress, desc=f"santurkar seed {ctx.seed} dln {variant}")
    _log_probes(ctx, "dln", variant, ics, None)
    ctx.log({"kind": "end", "seed": ctx.seed, "net": "dln", "variant": variant, "steps": result.steps,
             "diverged": result.diverged, "seconds": round(result.seconds, 2)})
