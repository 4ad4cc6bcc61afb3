"""E2's networks: the small VGG-style CNN (four variants), the deep linear network, and the noise of "noisy" BN.

Every network is a flat ``torch.nn.Sequential`` whose modules are named by layer: ``conv1`` … ``conv5``, ``fc6``,
``fc7`` for the CNN and ``fc1`` … ``fc25`` for the deep linear network, with ``bn{k}``, ``noise{k}``, ``relu{k}``
and ``pool{k}`` beside them. So layer k's parameters are those of the modules whose name ends in k
(:func:`layer_parameters`), which is how the internal-covariate-shift probe groups them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

import bnlab
from bnlab.init import he_normal_

__all__ = ["CNN_POOLS", "CnnVariant", "NoisyShift", "cnn", "dln", "layer_parameters", "preactivation",
           "shared_weights"]

CnnVariant = tuple[bool, bool]  # (batch norm, noise)
CNN_POOLS = (2, 4, 5)  # a 2×2 max-pool after these conv layers: conv 32-32-pool-64-64-pool-128-pool


class NoisyShift(torch.nn.Module):
    """Santurkar-style noise injected after a batch norm (bnlab's definition, docs/experiments.md).

    In training mode, at every forward pass (one per optimizer step), for every feature j (dim 1) draw a mean
    μ_j ~ U(−``mean_range``, ``mean_range``) and a scale σ_j ~ U(1, ``scale_range``), then for every value of that
    feature (every sample and spatial position) ε ~ N(0, 1), and return σ_j · (y + μ_j + ε): noise i.i.d. over the
    batch, with a non-zero mean and a non-unit variance, whose distribution changes at every step. In eval mode it
    is the identity. Draws from torch's global generator.
    """

    def __init__(self, mean_range: float, scale_range: float) -> None:
        super().__init__()
        if not (mean_range >= 0 and scale_range >= 1 and math.isfinite(mean_range) and math.isfinite(scale_range)):
            raise ValueError(f"the noise needs mean_range ≥ 0 and scale_range ≥ 1, got {mean_range}, {scale_range}")
        self.mean_range, self.scale_range = mean_range, scale_range

    def forward(self, y: Tensor) -> Tensor:
        if not self.training:
            return y
        shape = (1, y.shape[1]) + (1,) * (y.dim() - 2)  # one value per feature, broadcast over batch and space
        mu = (torch.rand(shape, device=y.device, dtype=y.dtype) * 2 - 1) * self.mean_range
        sigma = 1 + torch.rand(shape, device=y.device, dtype=y.dtype) * (self.scale_range - 1)
        return sigma * (y + mu + torch.randn_like(y))

    def extra_repr(self) -> str:
        return f"mean_range={self.mean_range}, scale_range={self.scale_range}"


def _normalizer(kind: str, features: int, backend: str) -> torch.nn.Module:
    if kind == "2d":
        return bnlab.BatchNorm2d(features, backend=backend)
    return bnlab.BatchNorm1d(features, backend=backend)


def cnn(channels: tuple[int, ...], fc: int, classes: int, *, batch_norm: bool, noise: bool, image_size: int = 28,
        in_channels: int = 1, noise_mean: float = 0.5, noise_scale: float = 1.25,
        backend: str = "auto") -> torch.nn.Sequential:
    """The VGG-style CNN: five 3×3 convolutions (padding 1) of ``channels`` with a 2×2 max-pool after the 2nd,
    4th and 5th, a hidden fully connected layer of ``fc`` units and the ``classes`` outputs; ReLU after every
    hidden layer. ``batch_norm`` puts a bnlab batch norm before each ReLU (and drops the bias it makes redundant);
    ``noise`` puts :class:`NoisyShift` just before each ReLU (after the batch norm when there is one). Weights are
    left as torch makes them: see :func:`shared_weights`."""
    if len(channels) != 5:
        raise ValueError(f"the CNN has five conv layers: give five channel counts, got {channels}")
    modules: OrderedDict[str, torch.nn.Module] = OrderedDict()
    width, size = in_channels, image_size
    for k in range(1, 8):
        if k <= 5:
            modules[f"conv{k}"] = torch.nn.Conv2d(width, channels[k - 1], 3, padding=1, bias=not batch_norm)
            width, kind = channels[k - 1], "2d"
        elif k == 6:
            modules["flatten"] = torch.nn.Flatten()
            modules["fc6"] = torch.nn.Linear(width * size * size, fc, bias=not batch_norm)
            width, kind = fc, "1d"
        else:
            modules["fc7"] = torch.nn.Linear(width, classes)
            break
        if batch_norm:
            modules[f"bn{k}"] = _normalizer(kind, width, backend)
        if noise:
            modules[f"noise{k}"] = NoisyShift(noise_mean, noise_scale)
        modules[f"relu{k}"] = torch.nn.ReLU()
        if k in CNN_POOLS:
            modules[f"pool{k}"] = torch.nn.MaxPool2d(2)
            size //= 2
    return torch.nn.Sequential(modules)


def dln(depth: int, width: int, *, batch_norm: bool, backend: str = "auto") -> torch.nn.Sequential:
    """The deep linear network: ``depth`` bias-free linear layers of ``width`` → ``width``, nothing between them,
    or with ``batch_norm`` a bnlab batch norm after each but the last (which makes the map affine per batch)."""
    modules: OrderedDict[str, torch.nn.Module] = OrderedDict()
    for k in range(1, depth + 1):
        modules[f"fc{k}"] = torch.nn.Linear(width, width, bias=False)
        if batch_norm and k < depth:
            modules[f"bn{k}"] = _normalizer("1d", width, backend)
    return torch.nn.Sequential(modules)


def _layer_of(module_name: str) -> int | None:
    digits = module_name[len(module_name.rstrip("0123456789")):]
    return int(digits) if digits else None


def layer_parameters(model: torch.nn.Sequential) -> list[list[str]]:
    """The parameter names of each layer (``conv{k}``/``fc{k}`` with its ``bn{k}``), in forward order, the layer's
    weight first: what :class:`~bnlab.lab.train.CovariateShiftProbe` takes."""
    layers: dict[int, list[str]] = {}
    for name, _ in model.named_parameters():
        module, _, param = name.rpartition(".")
        k = _layer_of(module)
        if k is None:
            raise ValueError(f"parameter {name!r} belongs to no numbered layer")
        layers.setdefault(k, [])
        # The conv or linear weight leads: it is the W_i whose gradient Definition 2.1 compares.
        is_weight = param == "weight" and not module.startswith("bn")
        if is_weight:
            layers[k].insert(0, name)
        else:
            layers[k].append(name)
    return [layers[k] for k in sorted(layers)]


def preactivation(model: torch.nn.Sequential, layer: int) -> torch.nn.Module:
    """The module whose output is layer ``layer``'s pre-activation, the input of its ReLU: the noise, else the
    batch norm, else the convolution or linear layer."""
    named = dict(model.named_children())
    for prefix in ("noise", "bn", "conv", "fc"):
        if f"{prefix}{layer}" in named:
            return named[f"{prefix}{layer}"]
    raise ValueError(f"the network has no layer {layer}")


def shared_weights(models: list[torch.nn.Sequential], generator: torch.Generator, init: str = "he_normal") -> None:
    """Initialize ``models`` (variants of one architecture) with the same weights: each conv or linear weight
    drawn once from ``generator`` (He normal for the ReLU CNN, or ``"orthogonal"``), biases 0; batch norms keep
    γ = 1, β = 0. The variants' weights have the same names and shapes, so each gets the same draw."""
    with torch.no_grad():
        reference = {n: p for n, p in models[0].named_parameters()
                     if n.endswith("weight") and not n.startswith("bn")}
        for tensor in reference.values():
            if init == "orthogonal":
                torch.nn.init.orthogonal_(tensor, generator=generator)
            else:
                he_normal_(tensor, generator=generator)
        for model in models:
            for name, p in model.named_parameters():
                if name in reference:
                    p.copy_(reference[name])
                elif name.endswith("bias") and not name.startswith("bn"):
                    p.zero_()
