"""A small finished run, shared by the lab tests that only read one: every experiment's smoke settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnlab.lab.registry import get_experiment
from bnlab.lab.runner import make_config, run_experiment


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The lab's default: its networks are tiny, and on a busy 2-core machine a second intra-op thread makes
    each operation wait for a descheduled peer (a 100-step test took 40 s with 2 threads, 0.1 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fig1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/fig1/<timestamp>/ of a two-seed smoke run on synthetic data (seconds)."""
    experiment = get_experiment("fig1")
    root = tmp_path_factory.mktemp("runs")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=root, seeds=(0, 1),
                          device="cpu", progress=False)
