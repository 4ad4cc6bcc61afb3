"""E5's units of work: the reference classifier (and its scores of real images), and one GAN per generator.

A GAN unit trains G and D together through the lab's step protocol (one step function, two
``stepper.optimize`` calls: the discriminator on a real batch and a separate fake batch, as the PyTorch example
does, then the generator through D on the same fake batch), logging the mean losses and D's mean outputs every
``loss_every`` steps. It then samples the same fixed z in every mode (:mod:`.modes`), scores 1,000 samples per
mode with the reference classifier (:mod:`.scores`), runs the batch-dependence test, and asks bnlab.doctor about
the generator. Both generator units of a seed start from the same weights (D's too) and see the same batches
and the same z.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import bnlab
from bnlab.data import DATA_DIR_NAMES, load_dataset
from bnlab.lab.experiments.dcgan_modes.classifier import load_classifier
from bnlab.lab.experiments.dcgan_modes.config import MODES, DcganConfig
from bnlab.lab.experiments.dcgan_modes.modes import batch_dependence, doctor_record, generate, mode_networks
from bnlab.lab.experiments.dcgan_modes.nets import discriminator, generator, paper_init
from bnlab.lab.experiments.dcgan_modes.scores import classify, score
from bnlab.lab.registry import RunContext, RunSetupError
from bnlab.lab.train import Stepper, batches, check_finite, make_optimizer, run_steps

__all__ = ["build_gan", "gan_step", "prepare", "real_name", "samples_name", "to_uint8", "train"]

Data = tuple[Tensor, Tensor, Tensor, Tensor, int]  # x_train, y_train, x_test, y_test in [-1, 1]; classes
IMAGE_SHAPE = (1, 28, 28)


def samples_name(seed: int, generator: str) -> str:
    """The artifact holding one generator's image grids in every mode and its batch-dependence images."""
    return f"samples-seed{seed}-{generator}"


def real_name(seed: int) -> str:
    """The artifact holding a grid of real training images."""
    return f"real-seed{seed}"


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] → (N, H, W) uint8 in 0..255, as the grids are stored."""
    return ((images[:, 0].float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def _data(config: DcganConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> Data:
    key = f"dcgan_modes-data-{config.dataset}-{device}"
    if key not in cache:
        data = load_dataset(config.dataset, data_dir=data_dir)
        if data.image_shape != IMAGE_SHAPE:
            raise RunSetupError(f"{config.dataset} has images of {data.image_shape}; the DCGAN here makes "
                                f"{IMAGE_SHAPE} images: use fashion-mnist, mnist-5k or synthetic")
        check_finite(data.x_train, f"the {config.dataset} training images")
        check_finite(data.x_test, f"the {config.dataset} test images")
        cache[key] = ((data.x_train * 2 - 1).to(device), data.y_train.to(device), (data.x_test * 2 - 1).to(device),
                      data.y_test.to(device), data.num_classes)
    return cache[key]  # type: ignore[no-any-return]


def prepare(config: DcganConfig, device: torch.device, data_dir: str | None, cache: dict[str, Any]) -> None:
    """Check, before the run folder is made, that the data loads as 28 × 28 images with enough of them, and that
    the batch-norm backend runs on ``device``; RunSetupError or FileNotFoundError otherwise."""
    if data_dir is not None and config.dataset not in DATA_DIR_NAMES:
        raise RunSetupError(f"--data-dir is used only by {', '.join(DATA_DIR_NAMES)}, and this run's data set is "
                            f"{config.dataset}, which ships inside a Python package; drop --data-dir")
    try:
        bnlab.kernels.resolve(config.backend, device, torch.float32)
    except (bnlab.kernels.BackendUnavailableError, ValueError) as err:
        raise RunSetupError(str(err)) from None
    try:
        x_train, _, x_test, _, _ = _data(config, device, data_dir, cache)
    except ValueError as err:  # a corrupt file, non-finite values (a missing one is a FileNotFoundError)
        raise RunSetupError(str(err)) from None
    for name in ("batch_size", "score_samples"):  # real images are scored as many as the samples of a mode
        if getattr(config, name) > len(x_train):
            raise RunSetupError(f"{name} {getattr(config, name):,} is more than the {len(x_train):,} training "
                                f"images of {config.dataset}")
    if len(x_test) < 2:
        raise RunSetupError(f"{config.dataset} has {len(x_test)} test image(s); the Fréchet distance needs 2")


def _generator(seed: int, what: str) -> torch.Generator:
    """A generator for one purpose of one seed, the same in every unit (crc32: stable across processes)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(what.encode())) % 2**63)


def build_gan(config: DcganConfig, name: str, seed: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(G, D) for generator ``name`` ("bn" or "plain"), initialized as the paper says; for a seed, both
    generators get the same convolution weights and the same D."""
    g = generator(config.latent, config.g_width, name == "bn", momentum=config.bn_momentum, backend=config.backend)
    d = discriminator(config.d_width, config.d_batch_norm, momentum=config.bn_momentum, backend=config.backend)
    paper_init(g, config.init_std, _generator(seed, "generator"))
    paper_init(d, config.init_std, _generator(seed, "discriminator"))
    return g, d


def gan_step(g: nn.Module, d: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             latent: int) -> Any:
    """The DCGAN step (the PyTorch example's): D on a real batch and on a fake batch, then G through D on the same
    fake batch. z ~ N(0, I) from torch's global generator (the runner seeds it per unit). Returns the losses and
    D's mean outputs on the real and fake batches."""
    bce = nn.functional.binary_cross_entropy

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        real = batch[0]
        n = real.shape[0]
        ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)
        fake = g(torch.randn(n, latent, 1, 1, device=real.device))
        d_real, d_fake = d(real), d(fake.detach())
        loss_d = bce(d_real, ones) + bce(d_fake, zeros)
        stepper.optimize("discriminator", d, opt_d, loss_d)
        loss_g = bce(d(fake), ones)
        stepper.optimize("generator", g, opt_g, loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": d_real.detach().mean(),
                "d_fake": d_fake.detach().mean()}
    return step


def _reference(config: DcganConfig, ctx: RunContext, data: Data) -> tuple[Any, Tensor]:
    """(the reference classifier, its features of the test images), once per run; logs the classifier record."""
    key = f"dcgan_modes-classifier-{config.dataset}-{ctx.device}"
    if key not in ctx.cache:
        classifier, entry, made = load_classifier(ctx.shared, config.dataset, data, config.classifier_epochs,
                                                  ctx.device)
        features = classify(classifier, data[2])[1]
        ctx.cache[key] = (classifier, features, entry, made)
    return ctx.cache[key][0], ctx.cache[key][1]


def train(config: DcganConfig, ctx: RunContext) -> None:
    """One unit: the reference classifier and real images' scores, or one GAN trained and measured."""
    data = _data(config, ctx.device, ctx.data_dir, ctx.cache)
    classifier, reference = _reference(config, ctx, data)
    if "reference" in ctx.unit:
        _, _, entry, made = ctx.cache[f"dcgan_modes-classifier-{config.dataset}-{ctx.device}"]
        ctx.log({"kind": "classifier", "seed": ctx.seed, "dataset": config.dataset,
                 "test_accuracy": round(float(entry["test_accuracy"]), 6), "made": made,
                 "seconds": round(float(entry["seconds"]), 2), "classes": int(entry["classes"])})
        order = torch.randperm(len(data[0]), generator=_generator(ctx.seed, "real")).to(ctx.device)
        real = data[0][order[:config.score_samples]]
        ctx.log({"kind": "real", "seed": ctx.seed, **score(classifier, real, reference).record()})
        if ctx.artifacts is not None:
            ctx.artifacts.save_arrays(real_name(ctx.seed), images=to_uint8(real[:config.grid]))
        return
    name = ctx.unit["generator"]
    g, d = build_gan(config, name, ctx.seed)
    g, d = g.to(ctx.device), d.to(ctx.device)
    _train_gan(config, ctx, name, g, d, data[0])
    _measure(config, ctx, name, g, classifier, reference)


def _train_gan(config: DcganConfig, ctx: RunContext, name: str, g: nn.Module, d: nn.Module, x: Tensor) -> None:
    betas = (config.beta1, 0.999)
    opt_g = make_optimizer(g.parameters(), "adam", config.lr, betas=betas)
    opt_d = make_optimizer(d.parameters(), "adam", config.lr, betas=betas)
    stream = batches((x,), config.batch_size, _generator(ctx.seed, "batches"))

    def log(record: dict[str, Any]) -> None:
        if record["step"] > 0:
            ctx.log({"kind": "losses", "seed": ctx.seed, "generator": name, **record})

    every = sorted({*range(config.loss_every, config.steps + 1, config.loss_every), config.steps})
    result = run_steps(gan_step(g, d, opt_g, opt_d, config.latent), stream, steps=config.steps, models=[g, d],
                       eval_steps=every, on_eval=log, progress=ctx.progress, desc=f"dcgan_modes seed {ctx.seed} {name}")
    ctx.log({"kind": "end", "seed": ctx.seed, "generator": name, "steps": result.steps, "diverged": result.diverged,
             "seconds": round(result.seconds, 2)})


def _measure(config: DcganConfig, ctx: RunContext, name: str, g: nn.Module, classifier: Any,
             reference: Tensor) -> None:
    """Sample and score every mode, test the batch dependence, ask the doctor; the same z for every generator."""
    draw = _generator(ctx.seed, "samples")

    def z(n: int) -> Tensor:
        return torch.randn(n, config.latent, 1, 1, generator=draw).to(ctx.device)

    z_grid, z_score, z_companions = z(config.grid), z(config.score_samples), z(config.grid - 1)
    recal_z = [z(config.batch_size) for _ in range(config.recal_batches)]
    networks = mode_networks(g, config, recal_z)
    arrays: dict[str, np.ndarray] = {}
    for mode in MODES:
        net, batch = networks[mode]
        arrays[mode] = to_uint8(generate(net, z_grid, batch))
        scores = score(classifier, generate(net, z_score, batch), reference)
        ctx.log({"kind": "mode", "seed": ctx.seed, "generator": name, "mode": mode, **scores.record()})
    for mode in ("train", "eval"):
        diff, identical, images = batch_dependence(networks[mode][0], z_grid[:1], (z_grid[1:], z_companions))
        ctx.log({"kind": "batch", "seed": ctx.seed, "generator": name, "mode": mode, "max_abs_diff": diff,
                 "identical": identical})
        arrays[f"batch-{mode}"] = to_uint8(images)
    if ctx.artifacts is not None:
        ctx.artifacts.save_arrays(samples_name(ctx.seed, name), **arrays)
    if any(isinstance(m, nn.BatchNorm2d) for m in g.modules()):
        doctor_z = [z(config.batch_size) for _ in range(config.doctor_batches)]
        ctx.log({"kind": "doctor", "seed": ctx.seed, "generator": name, **doctor_record(g, doctor_z)})
