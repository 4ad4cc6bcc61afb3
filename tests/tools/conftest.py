"""Shared by the fold tests: batch-norm statistics far from their initial values, so that a wrong fold shows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import bnlab

#: ``randomize(model)``: the model in eval mode with every batch norm's statistics, γ and β drawn at random.
Randomize = Callable[[nn.Module], nn.Module]


def randomize_norms(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | bnlab.nn.FrozenBatchNormBase):
                if m.running_mean is not None:
                    m.running_mean.uniform_(-2, 2)
                    m.running_var.uniform_(0.3, 3)
                if m.weight is not None:
                    m.weight.uniform_(-2, 2)
                if m.bias is not None:
                    m.bias.uniform_(-1, 1)
    return model.eval()


@pytest.fixture
def randomize() -> Randomize:
    return randomize_norms
