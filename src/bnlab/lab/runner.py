"""Running an experiment: a fresh run folder, its files, every seed, then the result, figures and report.

The order is what lets an interrupted run keep its value: ``config.json`` and ``env.json`` are written before any
training, ``metrics.jsonl`` grows as the run measures, and ``result.json``, the figures and ``report.html`` come
last, from those files alone (the same code ``bnlab report`` runs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bnlab.lab import engine
from bnlab.lab.config import apply_overrides
from bnlab.lab.records import CONFIG, ENV, METRICS, MetricsWriter, environment, new_run_dir, write_json
from bnlab.lab.registry import Experiment, RunContext
from bnlab.lab.report import build_report, write_index

__all__ = ["DEFAULT_THREADS", "make_config", "run_experiment"]

# The lab's networks are small (an MLP on batches of 60): PyTorch's intra-op threads cost more than they give,
# and far more when other processes share the cores (docs/experiments.md has the measurement).
DEFAULT_THREADS = 1


def make_config(experiment: Experiment, *, quick: bool = False, overrides: Sequence[str] | Mapping[str, Any] = (),
                smoke: bool = False) -> Any:
    """The experiment's defaults, then its ``--quick`` (or smoke) settings, then the user's overrides."""
    config = experiment.config_cls()
    if smoke:
        config = apply_overrides(config, dict(experiment.smoke))
    if quick:
        config = apply_overrides(config, dict(experiment.quick))
    return apply_overrides(config, overrides)


def run_experiment(experiment: Experiment, config: Any, *, out_root: Path, seeds: Sequence[int] = (0,),
                   device: str = "auto", data_dir: str | None = None, quick: bool = False,
                   deterministic: bool = False, threads: int | None = DEFAULT_THREADS,
                   progress: bool | None = None, command: str | None = None) -> Path:
    """Run ``experiment`` with ``config`` for each seed; returns the run folder ``out_root/NAME/TIMESTAMP``.

    Args:
        seeds: one training per seed; the result and figures show mean and spread across them.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        data_dir: where local data sets are looked for (see :func:`bnlab.data.load_dataset`).
        threads: CPU threads for PyTorch (None leaves PyTorch's choice).
        progress: show progress bars (None: only when stderr is a terminal).
    """
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the seeds must differ, got {list(seeds)}")
    torch_device = engine.resolve_device(device)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    threads_before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _run(experiment, config, out_root, seeds, torch_device, data_dir, quick, deterministic, progress,
                    command)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def _run(experiment: Experiment, config: Any, out_root: Path, seeds: Sequence[int], torch_device: torch.device,
         data_dir: str | None, quick: bool, deterministic: bool, progress: bool | None, command: str | None) -> Path:
    run_dir = new_run_dir(out_root, experiment.name)
    write_json(run_dir / CONFIG, {
        "experiment": experiment.name,
        "config": dataclasses.asdict(config),
        "quick": quick,
        "quick_settings": dict(experiment.quick) if quick else {},
        "seeds": list(seeds),
        "device": str(torch_device),
        "data_dir": data_dir,
        "deterministic": deterministic,
    })
    write_json(run_dir / ENV, environment(torch_device, command))
    cache: dict[str, Any] = {}
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        with MetricsWriter(run_dir / METRICS) as log:
            for seed in seeds:
                engine.seed_everything(seed, deterministic)
                experiment.train(config, RunContext(seed=seed, device=torch_device, log=log, data_dir=data_dir,
                                                    progress=progress, deterministic=deterministic, cache=cache))
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    build_report(run_dir)
    write_index(out_root)
    return run_dir
