"""E5's networks: the small DCGAN at 28 × 28 (EXPERIMENTS.md §6.C) and the reference classifier that scores it.

Generator, z (N, latent, 1, 1) → image (N, 1, 28, 28) in [-1, 1]:
ConvT(latent→w, 7, 1, 0)-BN-ReLU → ConvT(w→w/2, 4, 2, 1)-BN-ReLU → ConvT(w/2→1, 4, 2, 1)-Tanh, w = 256.
Without BN, each BN is left out and its transposed convolution gets a bias (zero at first) in place of β.

Discriminator, image → probability "real" (N,):
Conv(1→d, 4, 2, 1)-LReLU(0.2) → Conv(d→2d, 4, 2, 1)-BN-LReLU(0.2) → Conv(2d→1, 7, 1, 0)-Sigmoid, d = 64.
No BN on D's input layer nor on G's output layer (the paper); no biases (the PyTorch example).

The reference classifier is a small CNN without batch norm (its scores must not depend on a mode):
Conv(1→16, 3, pad 1)-ReLU-MaxPool(2) → Conv(16→32, 3, pad 1)-ReLU-MaxPool(2) → Linear(1568→64)-ReLU → Linear(64→C).
The 64 values after the first linear layer's ReLU are the features of the Fréchet distance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bnlab

__all__ = ["CLASSIFIER_FEATURES", "Classifier", "discriminator", "generator", "paper_init"]

CLASSIFIER_FEATURES = 64
LEAK = 0.2  # the paper's LeakyReLU slope


def _norm(channels: int, momentum: float, backend: str) -> nn.Module:
    return bnlab.BatchNorm2d(channels, momentum=momentum, backend=backend)


def generator(latent: int, width: int, batch_norm: bool, *, momentum: float = 0.1,
              backend: str = "auto") -> nn.Sequential:
    """The 28 × 28 DCGAN generator (module docstring), with or without batch norm."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(latent, width, 7, 1, 0, bias=not batch_norm)]
    if batch_norm:
        layers.append(_norm(width, momentum, backend))
    layers += [nn.ReLU(), nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(_norm(width // 2, momentum, backend))
    layers += [nn.ReLU(), nn.ConvTranspose2d(width // 2, 1, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(width: int, batch_norm: bool, *, momentum: float = 0.1, backend: str = "auto") -> nn.Sequential:
    """The 28 × 28 DCGAN discriminator (module docstring); its output is (N,) probabilities."""
    layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1, bias=False), nn.LeakyReLU(LEAK),
                               nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False)]
    if batch_norm:
        layers.append(_norm(2 * width, momentum, backend))
    layers += [nn.LeakyReLU(LEAK), nn.Conv2d(2 * width, 1, 7, 1, 0, bias=False), nn.Sigmoid(), nn.Flatten(0)]
    return nn.Sequential(*layers)


def paper_init(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """The DCGAN initialization, drawn from ``generator``: conv weights N(0, std²), BN's γ N(1, std²), biases and
    β zero. Every conv weight is drawn before any γ, so the networks with and without BN get the same weights."""
    with torch.no_grad():
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
            if conv.bias is not None:
                conv.bias.zero_()
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.copy_(1 + torch.randn(norm.weight.shape, generator=generator) * std)
            norm.bias.zero_()


class Classifier(nn.Module):
    """The reference classifier (module docstring): ``forward`` gives logits (N, C), :meth:`features` the
    (N, 64) penultimate features."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(32 * 7 * 7, CLASSIFIER_FEATURES), nn.ReLU())
        self.head = nn.Linear(CLASSIFIER_FEATURES, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]
