"""The experiments registry: an experiment is a set of functions over a frozen dataclass configuration.

- ``train(config, ctx)`` trains for one seed (``ctx.seed``) and streams its measurements through ``ctx.log``;
- ``summarize(config, records)`` turns the measurements of all seeds into the result: the numbers, the tables
  and each claim of the paper with the verdict this run reached;
- ``plot(config, records, result, out_dir)`` draws the figures from those files alone;
- ``prepare(config, device, data_dir, cache)`` (optional) checks, before the run folder is made, that the run can
  start (data on disk, a batch-norm backend that runs on the device), and may load what the seeds share.

So a run can be re-summarized and re-plotted from its files without training again (``bnlab report``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENT_MODULES", "Experiment", "Figure", "RunContext", "RunSetupError", "experiment_names",
           "get_experiment", "register"]

# Modules that register experiments when imported; later issues add theirs here.
EXPERIMENT_MODULES: tuple[str, ...] = ("bnlab.lab.experiments.fig1",)

Records = list[dict[str, Any]]


class RunSetupError(ValueError):
    """A run that cannot start as asked (a bad seed list, an unusable device or backend, unreadable data, an
    option the run does not use); the message says what to change. The CLI prints it as one line."""


@dataclass(frozen=True)
class Figure:
    """A figure written by an experiment's ``plot``: ``stem`` names ``stem.png`` and ``stem.svg`` in the run folder."""

    stem: str
    caption: str


@dataclass
class RunContext:
    """What ``train`` gets besides its configuration: the seed, the device, where to log, how to load data."""

    seed: int
    device: Any  # torch.device
    log: Callable[[dict[str, Any]], None]
    data_dir: str | None = None
    progress: bool | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the seeds of one run (e.g. the data set)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment. ``quick`` holds the settings ``--quick`` changes (stated in the report)."""

    name: str
    summary: str
    config_cls: type
    train: Callable[[Any, RunContext], None]
    summarize: Callable[[Any, Records], dict[str, Any]]
    plot: Callable[[Any, Records, Mapping[str, Any], Path], list[Figure]]
    quick: Mapping[str, Any] = field(default_factory=dict)
    smoke: Mapping[str, Any] = field(default_factory=dict)  # settings for a seconds-long run on synthetic data
    # (config, device, data_dir, cache): raises RunSetupError or FileNotFoundError when the run cannot start.
    prepare: Callable[[Any, Any, str | None, dict[str, Any]], None] | None = None


_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def _load() -> None:
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)


def experiment_names() -> list[str]:
    _load()
    return sorted(_EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; an unknown name is a ValueError listing the known ones."""
    _load()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(sorted(_EXPERIMENTS))}") from None
