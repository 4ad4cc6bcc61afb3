"""Running an experiment: checks, a fresh run folder, its files, every seed, then the result, figures and report.

The order is what lets a refused run leave nothing and an interrupted one keep its value: the arguments, the
device and the experiment's own ``prepare`` (data on disk, a backend that runs on the device) are checked before
the folder exists; ``config.json`` and ``env.json`` are written before any training; ``metrics.jsonl`` grows as
the run measures (its first record is the plan, the seeds); and ``result.json``, the figures and ``report.html``
come last, from those files alone (the same code ``bnlab report`` runs). A run that stops before it measured
anything leaves no folder; one stopped by Ctrl-C later keeps its folder and says how to build its report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bnlab.lab import engine
from bnlab.lab.config import apply_overrides
from bnlab.lab.records import CONFIG, ENV, METRICS, MetricsWriter, environment, new_run_dir, write_json
from bnlab.lab.registry import Experiment, RunContext, RunSetupError
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

    Raises:
        RunSetupError: the run cannot start as asked (seeds, threads, device, or the experiment's ``prepare``);
            nothing is written.
        FileNotFoundError: a data set is not installed (the message says how to get it); nothing is written.
    """
    seeds = list(seeds)
    if not seeds:
        raise RunSetupError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise RunSetupError(f"the seeds must differ, got {seeds}")
    if threads is not None and threads < 1:
        raise RunSetupError(f"threads must be at least 1, got {threads}")
    try:
        torch_device = engine.resolve_device(device)
    except ValueError as err:
        raise RunSetupError(str(err)) from None
    threads_before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        cache: dict[str, Any] = {}
        if experiment.prepare is not None:
            experiment.prepare(config, torch_device, data_dir, cache)
        return _run(experiment, config, out_root, seeds, torch_device, data_dir, quick, deterministic, progress,
                    command, cache)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def _run(experiment: Experiment, config: Any, out_root: Path, seeds: list[int], torch_device: torch.device,
         data_dir: str | None, quick: bool, deterministic: bool, progress: bool | None, command: str | None,
         cache: dict[str, Any]) -> Path:
    run_dir = new_run_dir(out_root, experiment.name)
    write_json(run_dir / CONFIG, {
        "experiment": experiment.name,
        "config": dataclasses.asdict(config),
        "quick": quick,
        # The values this run used for the settings --quick changes (--set may have changed them again).
        "quick_settings": {key: getattr(config, key) for key in experiment.quick} if quick else {},
        "seeds": seeds,
        "device": str(torch_device),
        "data_dir": data_dir,
        "deterministic": deterministic,
    })
    write_json(run_dir / ENV, environment(torch_device, command))
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    log = MetricsWriter(run_dir / METRICS)
    try:
        with log:
            log({"kind": "plan", "seeds": seeds})
            for seed in seeds:
                engine.seed_everything(seed, deterministic)
                experiment.train(config, RunContext(seed=seed, device=torch_device, log=log, data_dir=data_dir,
                                                    progress=progress, cache=cache))
    except BaseException as err:
        measured = log.written > 1  # more than the plan
        if not measured:
            _remove(run_dir)
        if isinstance(err, KeyboardInterrupt):
            _tell_interrupted(run_dir if measured else None, out_root)
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    build_report(run_dir)
    write_index(out_root)
    return run_dir


def _remove(run_dir: Path) -> None:
    """Delete a run folder that holds no measurement, and its experiment folder if that is left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # other runs are there
        run_dir.parent.rmdir()


def _tell_interrupted(run_dir: Path | None, out_root: Path) -> None:
    if run_dir is None:
        print("bnlab: interrupted before anything was measured; nothing was measured, so no run folder is kept",
              file=sys.stderr)
        return
    with contextlib.suppress(OSError):  # the index is a convenience; the message below matters more
        write_index(out_root)
    print(f"bnlab: what the run measured is in {run_dir}; `bnlab report {run_dir}` builds its report from it",
          file=sys.stderr)
