"""Activation checkpointing recomputes a forward in the backward pass: bnlab batch norm must update its running
statistics and batch count once per step, as without checkpointing (pytorch issue 96136): plain layers, the fused
ones, ghost batch norm and the other frameworks' conventions alike."""

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
    _check_one_update_per_step(lambda: bnlab.BatchNorm1d(3, momentum=momentum, backend=backend), reentrant)


def _check_one_update_per_step(make, reentrant: bool) -> None:  # type: ignore[no-untyped-def]
    """Two steps of Linear → make() → Tanh, plain and under checkpoint: the same state and gradients."""
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(4, 3), make(), torch.nn.Tanh()) for _ in range(2)]
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

VARIANTS = [
    pytest.param(lambda: bnlab.nn.GhostBatchNorm1d(3, virtual_batch_size=4), id="ghost"),
    pytest.param(lambda: bnlab.BatchNorm1d(3, convention="keras"), id="keras"),
    pytest.param(lambda: bnlab.BatchNorm1d(3, momentum=0.01, convention="darknet"), id="darknet"),
    pytest.param(lambda: bnlab.nn.BatchNormAct1d(3, activation="relu", convention="flax"), id="fused-flax"),
    pytest.param(lambda: bnlab.nn.BatchNormAct1d(3, activation="relu"), id="fused"),
]


@pytest.mark.parametrize("reentrant", [pytest.param(True, id="reentrant"), pytest.param(False, id="non-reentrant")])
@pytest.mark.parametrize("make", VARIANTS)
def test_a_recomputed_variant_forward_counts_the_batch_once(reentrant: bool, make) -> None:  # type: ignore[no-untyped-def]
    _check_one_update_per_step(make, reentrant)
