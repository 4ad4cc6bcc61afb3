"""bnlab.summary against Keras's own ``model.summary()``: the same network built in both frameworks gives the same
"Param #" per layer and the same three totals lines (Total / Trainable / Non-trainable params, with their sizes),
batch norm included (4 parameters per feature, 2 of them non-trainable), frozen layers included."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch

import bnlab


def keras_summary(model: Any) -> tuple[list[str], list[str], list[str]]:
    """(Param # per layer, output shape per layer, the totals lines) of Keras's printed summary."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.extend(line.splitlines()))
    params, shapes = [], []
    for line in lines:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[-1]:  # a layer's first line (a long name wraps onto a second line with empty cells)
                params.append(cells[-1])
                shapes.append(cells[1])
    totals = [line.strip() for line in lines if "params:" in line]
    return params, shapes, totals


def mlp(keras: ModuleType) -> tuple[Any, torch.nn.Module, tuple[int, ...]]:
    layers = keras.layers
    theirs = keras.Sequential([keras.Input((28, 28)), layers.Flatten(), layers.Dense(300), layers.BatchNormalization(),
                               layers.Activation("relu"), layers.Dense(100, use_bias=False),
                               layers.BatchNormalization(), layers.Activation("selu"), layers.Dense(10)])
    ours = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.BatchNorm1d(300),
                               torch.nn.ReLU(), torch.nn.Linear(300, 100, bias=False), bnlab.BatchNorm1d(100),
                               torch.nn.SELU(), torch.nn.Linear(100, 10))
    return theirs, ours, (1, 28, 28)


def cnn(keras: ModuleType) -> tuple[Any, torch.nn.Module, tuple[int, ...]]:
    layers = keras.layers  # Keras is channels-last: (28, 28, 1) where PyTorch takes (1, 28, 28)
    theirs = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3, use_bias=False),
                               layers.BatchNormalization(), layers.Activation("relu"), layers.MaxPooling2D(2),
                               layers.Flatten(), layers.Dense(10)])
    ours = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 13 * 13, 10))
    return theirs, ours, (1, 28, 28)


def frozen(keras: ModuleType) -> tuple[Any, torch.nn.Module, tuple[int, ...]]:
    """A frozen Dense and a frozen BatchNormalization (trainable=False) against requires_grad=False."""
    layers = keras.layers
    dense, norm = layers.Dense(50), layers.BatchNormalization()
    dense.trainable = False
    norm.trainable = False
    theirs = keras.Sequential([keras.Input((20,)), dense, norm, layers.Dense(5)])
    ours = torch.nn.Sequential(torch.nn.Linear(20, 50), torch.nn.BatchNorm1d(50), torch.nn.Linear(50, 5))
    for module in (ours[0], ours[1]):
        module.requires_grad_(False)
    return theirs, ours, (20,)


@pytest.mark.parametrize("build", [pytest.param(mlp, id="mlp-bn"), pytest.param(cnn, id="cnn-bn2d"),
                                   pytest.param(frozen, id="frozen-layers")])
def test_same_counts_as_keras(keras: ModuleType, build: Callable[[ModuleType], Any]) -> None:
    theirs, ours, size = build(keras)
    params, shapes, totals = keras_summary(theirs)
    found = bnlab.summary(ours, size)
    assert [f"{layer.params:,}" for layer in found.layers] == params
    assert [line.strip() for line in found.totals()[:3]] == totals
    if build is mlp:  # channels-first against channels-last: only the MLP's shapes read the same
        assert [layer.output_shape for layer in found.layers] == shapes
