"""The experiments: one package each under ``bnlab/lab/experiments/<name>/``, found without a list to edit.

A package is an experiment when its ``__init__.py`` defines ``EXPERIMENT``, an :class:`Experiment` whose name is
the package's. Its functions work over a frozen dataclass configuration (:mod:`bnlab.lab.config`):

- ``train(config, ctx)`` measures one unit of work (``ctx.unit``, one of ``units(config)``) for one seed
  (``ctx.seed``) and streams what it measures through ``ctx.log`` (and big arrays through ``ctx.artifacts``);
- ``summarize(config, records)`` turns the measurements of all seeds into a :class:`~bnlab.lab.result.Result`:
  the numbers, the tables, and each claim with the verdict this run reached;
- ``plot(config, records, result, out_dir)`` draws the figures from those files alone;
- ``prepare(config, device, data_dir, cache)`` (optional) checks, before the run folder is made, that the run
  can start (data on disk, a batch-norm backend that runs on the device), and may load what the seeds share.

So a run can be re-summarized and re-plotted from its files without training again (``bnlab report``).
docs/experiments.md says how to add one.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab.lab.config import check_config_class
from bnlab.lab.result import Result
from bnlab.lab.schema import RecordSchema
from bnlab.lab.store import Artifacts, SharedCache

__all__ = ["Experiment", "Figure", "RunContext", "RunSetupError", "experiment_names", "experiments",
           "get_experiment", "json_key"]

EXPERIMENTS_PACKAGE = "bnlab.lab.experiments"

Records = list[dict[str, Any]]
Unit = dict[str, Any]


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
    """What ``train`` gets besides its configuration.

    Attributes:
        seed: this unit's seed (the runner has seeded torch's generators with it just before).
        device: the ``torch.device`` to train on.
        log: writes one record (a JSON object) to ``metrics.jsonl`` at once; the runner adds ``point``.
        unit: which unit of work to do, one of the experiment's ``units(config)`` (``{}`` when it has one).
        artifacts: the run's ``artifacts/`` folder (a sweep point's, in a sweep), for arrays and weights too big
            for a record; ``plot`` finds it as ``Artifacts(out_dir)``.
        shared: the cache shared across runs (e.g. a reference classifier trained once).
        cache: an in-memory dict shared by the seeds and units of this run (e.g. the loaded data set).
        data_dir: where local data sets are looked for; progress: show progress bars (None: on a terminal).
    """

    seed: int
    device: Any  # torch.device
    log: Callable[[dict[str, Any]], None]
    unit: Unit = field(default_factory=dict)
    artifacts: Artifacts | None = None
    shared: SharedCache | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    progress: bool | None = None


def _one_unit(config: Any) -> list[Unit]:
    return [{}]


def _no_columns(config: Any) -> dict[str, str]:
    return {}


def _no_headline(result: Result) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: the package's name, what ``bnlab run NAME`` takes.
        summary: one line for ``bnlab list`` and the tour page.
        config_cls: the frozen dataclass of settings; its defaults are the full run.
        quick: the settings ``--quick`` changes (the tour runs them; the report states them).
        smoke: settings for a seconds-long run on synthetic data (what the tests run).
        records: the fields of each kind of record ``train`` logs, given the configuration (checked on read).
        units: the units of work of one seed (each a small JSON object, e.g. ``{"model": "bn"}``); the runner
            records each one's end, so an interrupted run resumes after the last finished unit.
        threads: PyTorch CPU threads this experiment runs with by default (small networks: 1; big matrix
            products: more). ``--threads`` overrides it.
        columns: the settings the runs index shows for a run (e.g. the data set and the steps).
        headline: a few numbers of a result for the tour page and sweep tables (e.g. final accuracies).
        order: where the tour lists it (then by name).
        trains_on_processes: its ``train`` trains through :func:`bnlab.lab.train.loop.train`, which on a
            ``bnlab run --nproc N`` run shares each batch among the processes (DDP and SyncBatchNorm); an
            experiment without it is refused ``--nproc`` rather than run N times over.
    """

    name: str
    summary: str
    config_cls: type
    train: Callable[[Any, RunContext], None]
    summarize: Callable[[Any, Records], Result]
    plot: Callable[[Any, Records, Result, Path], list[Figure]]
    records: Callable[[Any], RecordSchema]
    quick: Mapping[str, Any] = field(default_factory=dict)
    smoke: Mapping[str, Any] = field(default_factory=dict)
    # (config, device, data_dir, cache): raises RunSetupError or FileNotFoundError when the run cannot start.
    prepare: Callable[[Any, Any, str | None, dict[str, Any]], None] | None = None
    units: Callable[[Any], Sequence[Unit]] = _one_unit
    threads: int = 1
    columns: Callable[[Any], Mapping[str, str]] = _no_columns
    headline: Callable[[Result], Mapping[str, str]] = _no_headline
    order: int = 100
    trains_on_processes: bool = False

    def unit_list(self, config: Any) -> list[Unit]:
        """``units(config)``, checked: a non-empty list of distinct JSON objects."""
        units = [dict(u) for u in self.units(config)]
        keys = [json_key(u) for u in units]
        if not units or len(set(keys)) != len(keys):
            raise ValueError(f"{self.name}: units(config) must list distinct units of work, got {units}")
        return units


def json_key(value: Any) -> str:
    """A canonical text for a JSON value (units and sweep points are compared by it)."""
    return json.dumps(value, sort_keys=True)


_EXPERIMENTS: dict[str, Experiment] = {}


def _discover() -> None:
    package = importlib.import_module(EXPERIMENTS_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg or info.name.startswith("_") or info.name in _EXPERIMENTS:
            continue
        module = importlib.import_module(f"{EXPERIMENTS_PACKAGE}.{info.name}")
        experiment = getattr(module, "EXPERIMENT", None)
        if not isinstance(experiment, Experiment):
            raise TypeError(f"{module.__name__} defines no EXPERIMENT (a bnlab.lab.registry.Experiment)")
        if experiment.name != info.name:
            raise TypeError(f"{module.__name__}.EXPERIMENT is named {experiment.name!r}; name it {info.name!r}, "
                            f"as its package")
        check_config_class(experiment.config_cls)
        _EXPERIMENTS[info.name] = experiment


def experiments() -> dict[str, Experiment]:
    """The registry itself, by name: every package under ``bnlab/lab/experiments/`` that defines EXPERIMENT.

    Tests may replace an entry (``monkeypatch.setitem(experiments(), name, changed)``).
    """
    if not _EXPERIMENTS:
        _discover()
    return _EXPERIMENTS


def experiment_names() -> list[str]:
    """The experiments' names in the tour's order (``order``, then name)."""
    found = experiments()
    return sorted(found, key=lambda n: (found[n].order, n))


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; an unknown name is a ValueError listing the known ones."""
    found = experiments()
    try:
        return found[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(experiment_names())}") from None
