"""A small finished run, shared by the lab tests that only read one: every experiment's smoke settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.lab.registry import get_experiment
from bnlab.lab.runner import make_config, run_experiment

# The data tests' autouse one-thread fixture, defined once; importing it here makes it autouse for tests/lab too.
from data.conftest import _one_thread  # noqa: F401


@pytest.fixture(scope="session")
def fig1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/fig1/<timestamp>/ of a two-seed smoke run on synthetic data (seconds)."""
    experiment = get_experiment("fig1")
    root = tmp_path_factory.mktemp("runs")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=root, seeds=(0, 1),
                          device="cpu", progress=False)


@pytest.fixture(scope="session")
def variance_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/variance/<timestamp>/ of a smoke run on synthetic data (seconds)."""
    experiment = get_experiment("variance")
    root = tmp_path_factory.mktemp("runs")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=root, seeds=(0,), device="cpu",
                          progress=False)
