"""SyncBatchNorm's collectives on gloo: how many, who takes part, and what happens when ranks disagree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distributed.launcher import launch
from distributed.worker import STEPS, checkpoint_batch, checkpoint_model, randomize, step_data
from tolerances import FLOOR

TOL = {"rtol": 1e-10, "atol": 1e-12}


def test_one_collective_per_pass_none_in_eval_none_outside_the_subgroup(tmp_path: Path) -> None:
    # Three processes, a layer synchronized over ranks 0 and 1 only: rank 2 never calls the collective and
    # normalizes its own part; ranks 0 and 1 get the statistics of their two parts together. The first forward
    # of a layer adds a header-only handshake (docs/distributed.md), so step one has 2 + 1 and step two 1 + 1.
    results = launch("counts", 3, tmp_path)
    assert [r["train"] for r in results[:2]] == [[(2, 1), (1, 1)]] * 2
    assert results[2]["train"] == [(0, 0)] * STEPS
    assert [r["eval"] for r in results] == [0, 0, 0]
    reference = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    randomize(reference)
    weight, bias = reference.weight.detach(), reference.bias.detach()
    for step in range(STEPS):
        x, _, sizes = step_data("uneven", "NCHW", 3, step)
        x = x[:, :3].contiguous()
        parts = x.split(sizes)
        pair = torch.cat(parts[:2])
        expected = torch.nn.functional.batch_norm(pair, None, None, weight, bias, training=True)
        torch.testing.assert_close(torch.cat([results[0][f"y{step}"], results[1][f"y{step}"]]), expected, **TOL)
        alone = torch.nn.functional.batch_norm(parts[2], None, None, weight, bias, training=True)
        torch.testing.assert_close(results[2][f"y{step}"], alone, **TOL)
    assert int(results[0]["state"]["num_batches_tracked"]) == STEPS


@pytest.mark.parametrize("variant", [pytest.param("reentrant", id="reentrant"),
                                     pytest.param("non-reentrant", id="non-reentrant")])
def test_checkpointing_updates_running_statistics_once_and_synchronizes_once(tmp_path: Path, variant: str) -> None:
    results = launch("checkpoint", 2, tmp_path, variant)
    for rank in results:
        # Forward: the handshake and the statistics in step one, the statistics alone after; backward: one.
        assert rank["calls"] == [(2, 1), (1, 1)], rank["calls"]
    # One process, no checkpointing, the whole batch: the same running statistics and counter.
    model = checkpoint_model()
    for step in range(STEPS):
        x = checkpoint_batch(step, None).requires_grad_(True)
        model(x).square().sum().backward()
        torch.testing.assert_close(torch.cat([r["dx"][step] for r in results]), x.grad, **TOL)
    for rank in results:
        for key, value in model.state_dict().items():
            torch.testing.assert_close(rank["state"][key], value, **TOL, msg=lambda m, k=key: f"{k}: {m}")
        assert int(rank["state"]["1.num_batches_tracked"]) == STEPS


@pytest.mark.parametrize(("case", "failing", "message"), [
    pytest.param("skip", [0, 1], "at different layers", id="a-rank-skips-a-call"),
    pytest.param("channels", [0, 1], "channel counts differ", id="channel-counts-differ"),
    pytest.param("eval", [0], "did not complete within 2 s", id="a-rank-in-eval"),
])
def test_ranks_that_disagree_fail_in_bounded_time_naming_the_layer(tmp_path: Path, case: str, failing: list[int],
                                                                   message: str) -> None:
    results = launch("disagreement", 2, tmp_path, case)
    for rank, result in enumerate(results):
        if rank in failing:
            assert result["error"] is not None and message in result["error"], result
            assert "SyncBatchNorm (layer key" in result["error"]
            assert result["seconds"] < 15
        else:
            assert result["error"] is None, result


def test_too_few_values_in_the_group_names_the_count_and_bfloat16_keeps_float32_statistics(tmp_path: Path) -> None:
    results = launch("edges", 2, tmp_path)
    for rank in results:
        assert "SyncBatchNorm (layer key" in rank["error"] and "got 1 over the whole process group" in rank["error"]
    x = step_data("uneven", "NCHW", 2, 0)[0]
    whole = x.to(torch.bfloat16).double()  # the values the ranks saw, normalized in float64
    reference = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    expected = reference(whole)
    y = torch.cat([r["y"] for r in results])
    assert y.dtype == torch.bfloat16 and all(r["channels_last"] for r in results)
    torch.testing.assert_close(y.double(), expected, rtol=FLOOR[torch.bfloat16], atol=FLOOR[torch.bfloat16])
    for rank in results:
        assert rank["state"]["running_var"].dtype == torch.float32
        torch.testing.assert_close(rank["state"]["running_var"].double(), reference.running_var,
                                   rtol=1e-5, atol=1e-6)
