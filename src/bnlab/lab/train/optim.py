"""The optimizers experiments ask for by name."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("sgd", "momentum", "adam")


def make_optimizer(params: Any, name: str, lr: float, momentum: float = 0.9,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """``"sgd"`` (plain, fixed ``lr``), ``"momentum"`` (SGD with ``momentum``) or ``"adam"`` (with ``betas``;
    DCGAN uses (0.5, 0.999))."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the learning rate must be positive and finite, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
