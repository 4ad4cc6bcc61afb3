"""E3's networks: Géron's 100-layer classifiers, and the forward diagnostic at initialization.

Initialization as Keras's ``Dense`` layers get it in Géron's notebook: the hidden layers' weights from
``lecun_normal`` (SELU) or ``he_normal`` (ReLU), the output layer's from Keras's default ``glorot_uniform``, every
bias 0 (all from :mod:`bnlab.init`). The softmax of Keras's output layer is in the loss (cross-entropy on logits).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

import bnlab
from bnlab import init as keras_init
from bnlab.lab.experiments.selu_deep.config import SeluDeepConfig

__all__ = ["ACTIVATIONS", "HIDDEN_INIT", "build", "forward_stats", "gradient_ratios"]

HIDDEN_INIT = {"selu": "lecun_normal", "relu": "he_normal", "relu_bn": "he_normal", "selu_dropout": "lecun_normal"}
ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "selu": torch.nn.SELU, "relu": torch.nn.ReLU, "relu_bn": torch.nn.ReLU, "selu_dropout": torch.nn.SELU}
OUTPUT_INIT = "glorot_uniform"  # Keras's Dense default, what Géron's Dense(10, activation="softmax") gets
SMALL_STD = 0.01  # the diagnostic's tanh + N(0, 0.01²)


def build(name: str, config: SeluDeepConfig, image_shape: tuple[int, ...], classes: int,
          generator: torch.Generator) -> torch.nn.Sequential:
    """Network ``name`` (:data:`~.config.MODELS`): Flatten, ``depth`` × (Linear → [BN] → activation), [AlphaDropout],
    Linear to ``classes`` logits; weights drawn from ``generator``."""
    inputs = 1
    for d in image_shape:
        inputs *= d
    batch_norm = name == "relu_bn"
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    width = inputs
    for _ in range(config.depth):
        layers.append(torch.nn.Linear(width, config.width, bias=not batch_norm))  # β replaces the bias
        if batch_norm:
            layers.append(bnlab.BatchNorm1d(config.width, eps=config.bn_eps, momentum=config.bn_momentum,
                                            backend=config.backend))
        layers.append(ACTIVATIONS[name]())
        width = config.width
    if name == "selu_dropout":
        layers.append(torch.nn.AlphaDropout(config.alpha_dropout))
    head = torch.nn.Linear(width, classes)
    layers.append(head)
    model = torch.nn.Sequential(*layers)
    hidden = torch.nn.Sequential(*layers[:-1])
    keras_init.apply_(hidden, HIDDEN_INIT[name], generator=generator)
    keras_init.apply_(head, OUTPUT_INIT, generator=generator)
    return model


_DIAGNOSTIC_LAYERS: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "selu_lecun": (torch.selu, "lecun_normal"),
    "relu_he": (torch.relu, "he_normal"),
    "relu_lecun": (torch.relu, "lecun_normal"),
    "tanh_small": (torch.tanh, "small"),
}


def forward_stats(x: Tensor, network: str, depth: int, width: int,
                  generator: torch.Generator) -> tuple[list[float | None], list[float | None]]:
    """Mean and standard deviation (over the batch and the units) of each of ``depth`` bias-free layers' outputs,
    ``h = act(h Wᵀ)``, at initialization, for the diagnostic ``network`` on the rows of ``x`` (N, D); computed in
    float32 like training, each statistic accumulated in float64. None where it is not finite."""
    act, init = _DIAGNOSTIC_LAYERS[network]
    means: list[float | None] = []
    stds: list[float | None] = []
    h = x
    with torch.no_grad():
        for _ in range(depth):
            w = torch.empty(width, h.shape[1])
            if init == "small":
                w.normal_(0.0, SMALL_STD, generator=generator)
            else:
                keras_init.INITIALIZERS[init](w, generator=generator)
            h = act(h @ w.to(h.device).T)
            m, s = float(h.double().mean()), float(h.double().std())
            means.append(m if math.isfinite(m) else None)
            stds.append(s if math.isfinite(s) else None)
    return means, stds


def gradient_ratios(model: torch.nn.Module, x: Tensor, y: Tensor) -> list[float | None]:
    """‖∂L/∂W‖ / ‖W‖ for each linear layer's weight (input side first, the output layer last): how far one SGD
    step moves each layer relative to its size, on one batch ``(x, y)`` with the cross-entropy loss, in training
    mode (batch statistics). Measured on a copy, so the model's running statistics do not move."""
    probe = copy.deepcopy(model).train()
    linears = [m for m in probe.modules() if isinstance(m, torch.nn.Linear)]
    loss = torch.nn.functional.cross_entropy(probe(x), y)
    grads = torch.autograd.grad(loss, [m.weight for m in linears])
    out: list[float | None] = []
    for m, g in zip(linears, grads, strict=True):
        ratio = float(g.double().norm() / m.weight.detach().double().norm())
        out.append(ratio if math.isfinite(ratio) else None)
    return out
