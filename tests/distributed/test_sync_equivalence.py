"""SyncBatchNorm on 2 and 3 gloo processes equals one-process batch norm on the concatenation, in float64.

One launch per world size runs every case (each backend that computes float64 on CPU × uneven, empty and
one-sample-per-rank splits × (N, C) and (N, C, H, W); momentum=None and track_running_stats=False layers on the
first backend),
two SGD steps each; the tests compare outputs, input gradients, γ/β gradients summed over ranks (as DDP sums
them), running statistics and num_batches_tracked with torch's BatchNorm on the whole batch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from distributed.launcher import launch
from distributed.worker import SAMPLE_SHAPES, SETTINGS, equivalence_cases, randomize, train_steps
from tolerances import max_error

TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64: merged moments differ from one pass only by rounding
CASES = equivalence_cases()


@pytest.fixture(scope="module", params=[2, 3], ids=["2-processes", "3-processes"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[Any]]:
    world: int = request.param
    return world, launch("equivalence", world, tmp_path_factory.mktemp(f"equivalence{world}"))


def one_process(split: str, shape: str, setting: str, world: int) -> list[dict[str, Any]]:
    momentum, track, affine = SETTINGS[setting]
    cls = torch.nn.BatchNorm1d if shape == "NC" else torch.nn.BatchNorm2d
    layer = cls(SAMPLE_SHAPES[shape][0], momentum=momentum, track_running_stats=track, affine=affine,
                dtype=torch.float64)
    randomize(layer)
    return train_steps(layer, split, shape, world, None)


@pytest.mark.parametrize(("backend", "split", "shape", "setting"),
                         [pytest.param(*c, id="-".join(c)) for c in CASES])
def test_two_steps_equal_one_process_on_the_whole_batch(runs: tuple[int, list[Any]], backend: str, split: str,
                                                         shape: str, setting: str) -> None:
    world, results = runs
    ranks = [r[f"{backend}-{split}-{shape}-{setting}"] for r in results]
    whole = one_process(split, shape, setting, world)
    worst = 0.0
    for step, expected in enumerate(whole):
        parts = [rank[step] for rank in ranks]
        y = torch.cat([p["y"] for p in parts])
        dx = torch.cat([p["dx"] for p in parts])
        for name, ours, theirs in (("y", y, expected["y"]), ("dx", dx, expected["dx"])):
            torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m, n=name, s=step: f"step {s} {n}: {m}")
            worst = max(worst, max_error(ours, theirs))
        for part in parts:
            for ours, theirs in zip(part["grads"], expected["grads"], strict=True):  # summed over ranks already
                torch.testing.assert_close(ours, theirs, **TOL)
                worst = max(worst, max_error(ours, theirs))
            assert part["state"].keys() == expected["state"].keys()
            for key, value in expected["state"].items():
                torch.testing.assert_close(part["state"][key], value, **TOL, msg=lambda m, k=key: f"{k}: {m}")
    print(f"{world} processes {backend}-{split}-{shape}-{setting}: max difference {worst:.3g}")
