"""The mini Inception network: BN-Inception's shape (Ioffe & Szegedy 2015, appendix) at Fashion-MNIST's scale.

For 28×28×1 inputs and a base width ``w`` (channels of the first convolution; every width below scales with it):

==================== ========== ===========================================================================
stage                 output     layers
==================== ========== ===========================================================================
stem                 7×7×2w     conv 3×3 (w) → max pool 2 → [LRN] → conv 1×1 (w) → conv 3×3 (2w) → [LRN]
                                 → max pool 2
inception 3a         7×7×4.5w   1×1 (w) | 1×1 (w) → 3×3 (1.5w) | 1×1 (w) → 3×3 (1.5w) → 3×3 (1.5w) | avg pool
                                 3×3 → 1×1 (w/2)
inception 3b         7×7×6w     1×1 (1.5w) | 1×1 (w) → 3×3 (2w) | 1×1 (w) → 3×3 (1.5w) → 3×3 (1.5w) |
                                 avg pool 3×3 → 1×1 (w)
inception 3c (↓2)    4×4×10w    1×1 (2w) → 3×3/2 (2.5w) | 1×1 (w) → 3×3 (1.5w) → 3×3/2 (1.5w) | max pool 3×3/2
inception 4a         4×4×9w     1×1 (3w) | 1×1 (1.5w) → 3×3 (2.5w) | 1×1 (1.5w) → 3×3 (2.5w) → 3×3 (2.5w) |
                                 avg pool 3×3 → 1×1 (w)
head                 10         global average pool → [dropout] → linear
==================== ========== ===========================================================================

The stem reduces the grid 4× before the first module, as GoogLeNet's reduces 224 to 28 (8×); the modules run on
7×7 and 4×4 grids, which keeps a step affordable on a CPU (29 convolutions; 15 of them, then the classifier, on
the longest path). As in BN-Inception, the 5×5 branch of the original Inception module is two stacked 3×3
convolutions (the "double 3×3" branch), and module 3c reduces the grid with stride 2 inside its branches. Every
convolution is followed by the nonlinearity; with ``batch_norm`` a :class:`bnlab.BatchNorm2d` sits between them
(per channel, "applied to the input of each nonlinearity, in a convolutional way"), and the convolution has no
bias, since BN's β replaces it. LRN (``torch.nn.LocalResponseNorm``, as GoogLeNet's stem has it) is optional: the
accelerated variants remove it (§4.2.1, change 5).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

import bnlab

__all__ = ["ACTIVATIONS", "Activation", "InceptionModule", "MiniInception", "ReductionModule", "conv_unit",
           "initialize"]

Activation = Literal["relu", "sigmoid"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "sigmoid")
LRN_SIZE = 5  # GoogLeNet's local response normalization window (channels)


def _channels(value: float) -> int:
    """A width in channels, at least 1."""
    return max(1, round(value))


def conv_unit(cin: int, cout: int, kernel: int, activation: Activation, batch_norm: bool, *, stride: int = 1,
              bn_momentum: float = 0.1, backend: str = "auto") -> nn.Sequential:
    """Conv (``kernel``×``kernel``, same padding, bias only without BN) → [BatchNorm2d] → activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(bnlab.BatchNorm2d(cout, momentum=bn_momentum, backend=backend))
    layers.append(nn.ReLU() if activation == "relu" else nn.Sigmoid())
    return nn.Sequential(*layers)


class InceptionModule(nn.Module):
    """Four branches concatenated along channels: 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | avg pool 3×3 → 1×1.

    ``widths`` = (1×1, 3×3 reduce, 3×3, double-3×3 reduce, double-3×3, pool projection); (N, cin, H, W) →
    (N, w[0] + w[2] + w[4] + w[5], H, W).
    """

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int], activation: Activation,
                 batch_norm: bool, **unit: object) -> None:
        super().__init__()
        one, r3, c3, rd, cd, pool = widths

        def u(a: int, b: int, k: int) -> nn.Sequential:
            return conv_unit(a, b, k, activation, batch_norm, **unit)  # type: ignore[arg-type]

        self.branch1 = u(cin, one, 1)
        self.branch3 = nn.Sequential(u(cin, r3, 1), u(r3, c3, 3))
        self.branch33 = nn.Sequential(u(cin, rd, 1), u(rd, cd, 3), u(cd, cd, 3))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), u(cin, pool, 1))
        self.out_channels = one + c3 + cd + pool

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch33(x), self.branch_pool(x)], dim=1)


class ReductionModule(nn.Module):
    """BN-Inception's module 3c: the grid halves inside the branches, 1×1 → 3×3/2 | 1×1 → 3×3 → 3×3/2 | max pool
    3×3/2 (which passes the input's channels through). ``widths`` = (3×3 reduce, 3×3, double reduce, double)."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int], activation: Activation, batch_norm: bool,
                 **unit: object) -> None:
        super().__init__()
        r3, c3, rd, cd = widths

        def u(a: int, b: int, k: int, stride: int = 1) -> nn.Sequential:
            return conv_unit(a, b, k, activation, batch_norm, stride=stride, **unit)  # type: ignore[arg-type]

        self.branch3 = nn.Sequential(u(cin, r3, 1), u(r3, c3, 3, stride=2))
        self.branch33 = nn.Sequential(u(cin, rd, 1), u(rd, cd, 3), u(cd, cd, 3, stride=2))
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c3 + cd + cin

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3(x), self.branch33(x), self.branch_pool(x)], dim=1)


class MiniInception(nn.Module):
    """The network of the module docstring: (N, 1, 28, 28) images → (N, classes) logits.

    Args:
        width: base width w (channels of the first convolution).
        activation: "relu" (Inception) or "sigmoid" (the paper's Sigmoid variants).
        batch_norm: a BatchNorm2d before every nonlinearity.
        dropout: the probability of the dropout before the classifier (0: none).
        lrn: local response normalization in the stem (the original Inception's).
        bn_momentum, backend: of the BatchNorm2d layers.
    """

    def __init__(self, width: int, classes: int, activation: Activation, batch_norm: bool, dropout: float,
                 lrn: bool, in_channels: int = 1, bn_momentum: float = 0.1, backend: str = "auto") -> None:
        super().__init__()
        w = width
        unit: dict[str, object] = {"bn_momentum": bn_momentum, "backend": backend}

        def u(a: int, b: int, k: int) -> nn.Sequential:
            return conv_unit(a, b, k, activation, batch_norm, **unit)  # type: ignore[arg-type]

        stem: list[nn.Module] = [u(in_channels, w, 3), nn.MaxPool2d(2)]
        if lrn:
            stem.append(nn.LocalResponseNorm(LRN_SIZE))
        stem += [u(w, w, 1), u(w, 2 * w, 3)]
        if lrn:
            stem.append(nn.LocalResponseNorm(LRN_SIZE))
        stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        h = _channels
        self.inception3a = InceptionModule(2 * w, (w, w, h(1.5 * w), w, h(1.5 * w), h(w / 2)), activation,
                                           batch_norm, **unit)
        self.inception3b = InceptionModule(self.inception3a.out_channels,
                                           (h(1.5 * w), w, 2 * w, w, h(1.5 * w), w), activation, batch_norm, **unit)
        self.inception3c = ReductionModule(self.inception3b.out_channels, (2 * w, h(2.5 * w), w, h(1.5 * w)),
                                           activation, batch_norm, **unit)
        self.inception4a = InceptionModule(self.inception3c.out_channels,
                                           (3 * w, h(1.5 * w), h(2.5 * w), h(1.5 * w), h(2.5 * w), w), activation,
                                           batch_norm, **unit)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.inception4a.out_channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.inception4a(self.inception3c(self.inception3b(self.inception3a(x))))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))  # type: ignore[no-any-return]


def initialize(model: nn.Module, activation: Activation, generator: torch.Generator) -> None:
    """Draw every convolution's and the classifier's weights from ``generator``, in module order: He normal for
    ReLU, Glorot normal for sigmoid (Keras's truncated normals, :mod:`bnlab.init`); biases 0. BN layers keep
    γ = 1, β = 0. Networks of the same width and activation get the same weights from the same generator seed,
    with or without BN (BN adds no weights to draw, and the biases are not drawn), so the variants start paired."""
    draw = bnlab.init.he_normal_ if activation == "relu" else bnlab.init.glorot_normal_
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                if isinstance(module, nn.Linear):
                    bnlab.init.glorot_normal_(module.weight, generator=generator)  # the softmax layer: Glorot
                else:
                    draw(module.weight, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
