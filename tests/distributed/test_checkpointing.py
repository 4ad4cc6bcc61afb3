"""Activation checkpointing recomputes a forward in the backward pass: plain bnlab batch norm must update its
running statistics and batch count once per step, as without checkpointing (pytorch issue 96136)."""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint as checkpoint

import bnlab


@pytest.mark.parametrize("reentrant", [pytest.param(True, id="reentrant"), pytest.param(False, id="non-reentrant")])
@pytest.mark.parametrize("momentum", [pytest.param(0.1, id="momentum"), pytest.param(None, id="cumulative")])
@pytest.mark.parametrize("backend", [pytest.param("auto", id="auto"), pytest.param("reference", id="reference")])
def test_a_recomputed_forward_does_not_update_the_running_statistics_again(reentrant: bool, momentum: float | None,
                                                                           backend: str) -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(4, 3), bnlab.BatchNorm1d(3, momentum=momentum, backend=backend),
                                  torch.nn.Tanh()) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    plain, checkpointed = layers
    for _ in range(2):
        x = torch.randn(8, 4, requires_grad=True)
        plain(x).square().sum().backward()
        checkpoint.checkpoint(checkpointed, x, use_reentrant=reentrant).square().sum().backward()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[key], value, msg=lambda m, k=key: f"{k}: {m}")
    assert int(checkpointed[1].num_batches_tracked) == 2
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad)
