"""Running an experiment: checks, a fresh run folder, its files, every unit of work, then the result and report.

A run is a list of **units of work**: for each sweep point (a set of settings; one point when there is no
sweep), for each seed, for each of the experiment's units (``Experiment.units``). The runner writes a
``unit_start`` record before a unit and a ``unit_done`` record after it, and seeds torch's generators with the
unit's seed just before it, so a unit gives the same numbers whenever it runs. That is what makes a run
resumable: :func:`resume_run` drops what an interrupted unit had written and runs the units not yet done.

The order is what lets a refused run leave nothing and an interrupted one keep its value: the arguments (seeds,
threads, device, the runs folder, every point's settings) and the experiment's own ``prepare`` (data on disk, a
backend that runs on the device) are checked before the folder exists; ``config.json`` and ``env.json`` are
written before any training; ``metrics.jsonl`` grows as the run measures; and ``result.json``, the figures and
``report.html`` come last, from those files alone (the same code ``bnlab report`` runs). A run that stops before
it measured anything leaves no folder; one stopped later keeps its folder and says how to resume it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bnlab.lab import engine
from bnlab.lab.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, field_types
from bnlab.lab.records import (
    CONFIG,
    ENV,
    MAX_SEED,
    METRICS,
    MetricsWriter,
    RunFilesError,
    RunMeta,
    check_out_root,
    environment,
    new_run_dir,
    read_json,
    read_metrics,
    write_json,
)
from bnlab.lab.registry import Experiment, RunContext, RunSetupError, Unit, get_experiment, json_key
from bnlab.lab.report import build_report, point_dir, record_checker, write_index
from bnlab.lab.store import Artifacts, SharedCache
from bnlab.lab.train import NonFiniteDataError

__all__ = ["GRID_SEPARATOR", "check_seeds", "check_threads", "make_config", "parse_grid", "resume_run",
           "run_experiment"]

GRID_SEPARATOR = "/"  # between the values of a sequence-valued setting in --grid (commas separate its items)


def make_config(experiment: Experiment, *, quick: bool = False, overrides: Sequence[str] | Mapping[str, Any] = (),
                smoke: bool = False) -> Any:
    """The experiment's defaults, then its smoke settings, then its ``--quick`` settings, then the user's."""
    config = experiment.config_cls()
    if smoke:
        config = apply_overrides(config, dict(experiment.smoke))
    if quick:
        config = apply_overrides(config, dict(experiment.quick))
    return apply_overrides(config, overrides)


def parse_grid(experiment: Experiment, config: Any, axes: Sequence[str]) -> list[dict[str, Any]]:
    """The sweep's points from ``--grid key=v1,v2`` texts: the Cartesian product of the axes, in order, each point
    a mapping of settings in JSON form. A sequence-valued setting's values are separated by ``/``
    (``--grid lrs=0.1,1/0.01,0.1``). Each point's configuration is checked; ConfigError otherwise."""
    types_ = field_types(experiment.config_cls)
    values: dict[str, list[Any]] = {}
    for text in axes:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or key not in types_:
            known = ", ".join(types_)
            raise ConfigError(f"--grid expects key=value1,value2 with a setting of {experiment.name} ({known}), "
                              f"got {text!r}")
        if key in values:
            raise ConfigError(f"--grid names {key!r} twice")
        is_sequence = isinstance(getattr(config, key), list | tuple)
        items = [v.strip() for v in raw.split(GRID_SEPARATOR if is_sequence else ",")]
        if not raw.strip() or (not is_sequence and any(not v for v in items)):
            raise ConfigError(f"--grid {key} needs at least one value, got {raw!r}")
        parsed = [config_to_dict(apply_overrides(config, [f"{key}={v}"]))[key] for v in items]
        if len({json_key(v) for v in parsed}) != len(parsed):
            raise ConfigError(f"--grid {key} repeats a value: {raw!r}")
        values[key] = parsed
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def check_threads(threads: int) -> int:
    """``threads`` if it is between 1 and this machine's CPU count, else RunSetupError (a huge count crashes
    PyTorch's thread pool)."""
    cpus = os.cpu_count() or 1
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= cpus:
        raise RunSetupError(f"--threads must be between 1 and {cpus} (this machine's CPUs), got {threads}")
    return threads


def check_seeds(seeds: Sequence[Any]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise RunSetupError("give at least one seed")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise RunSetupError(f"a seed is an integer in 0..2^64 − 1 (what torch's generators take), got {seed}")
    if len(set(seeds)) != len(seeds):
        raise RunSetupError(f"the seeds must differ, got {seeds}")
    return seeds


def _point_configs(experiment: Experiment, config: Any, grid: Sequence[Mapping[str, Any]]) -> list[Any]:
    try:
        configs = [apply_overrides(config, dict(point)) for point in grid]
        for c in configs:
            experiment.unit_list(c)
    except ConfigError as err:
        raise RunSetupError(f"a sweep point is not a valid configuration: {err}") from None
    return configs


def _prepare(experiment: Experiment, configs: Sequence[Any], device: torch.device, data_dir: str | None,
             cache: dict[str, Any]) -> None:
    if experiment.prepare is None:
        return
    seen: set[str] = set()
    for config in configs:
        key = json_key(config_to_dict(config))
        if key not in seen:
            seen.add(key)
            try:
                experiment.prepare(config, device, data_dir, cache)
            except NonFiniteDataError as err:
                raise RunSetupError(str(err)) from None


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # a library call leaves the process as it found it


def run_experiment(experiment: Experiment, config: Any, *, out_root: Path, seeds: Sequence[int] = (0,),
                   grid: Sequence[Mapping[str, Any]] | None = None, device: str = "auto", data_dir: str | None = None,
                   quick: bool = False, deterministic: bool = False, threads: int | None = None,
                   progress: bool | None = None, command: str | None = None,
                   shared: SharedCache | None = None, nproc: int = 1) -> Path:
    """Run ``experiment`` with ``config`` for each sweep point and seed; returns ``out_root/NAME/TIMESTAMP``.

    Args:
        seeds: one training per seed; the result and figures show mean and spread across them.
        grid: the sweep's points, each a mapping of settings (:func:`parse_grid`); None: ``config`` alone.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        data_dir: where local data sets are looked for (see :func:`bnlab.data.load_dataset`).
        threads: CPU threads for PyTorch, 1..CPU count (None: the experiment's own default).
        progress: show progress bars (None: only when stderr is a terminal).
        shared: the cache shared across runs (default: :func:`bnlab.lab.store.default_cache_dir`).
        nproc: the processes this run trains on (``bnlab run --nproc``; recorded so that resuming uses as many).

    Raises:
        RunSetupError: the run cannot start as asked (seeds, threads, device, the runs folder, a sweep point, or
            the experiment's ``prepare``); nothing is written.
        FileNotFoundError: a data set is not installed (the message says how to get it); nothing is written.
    """
    seeds = check_seeds(seeds)
    threads = check_threads(threads) if threads is not None else min(experiment.threads, os.cpu_count() or 1)
    try:
        torch_device = engine.resolve_device(device)
        check_out_root(out_root)
    except ValueError as err:
        raise RunSetupError(str(err)) from None
    points: list[dict[str, Any]] = [dict(p) for p in grid] if grid else [{}]
    configs = _point_configs(experiment, config, points)
    meta = RunMeta(experiment=experiment.name, config=config_to_dict(config), seeds=seeds, grid=points, quick=quick,
                   quick_settings=({k: config_to_dict(config)[k] for k in experiment.quick} if quick else {}),
                   device=str(torch_device), data_dir=data_dir, deterministic=deterministic, threads=threads,
                   nproc=nproc)
    cache: dict[str, Any] = {}
    with _threads(threads):
        _prepare(experiment, configs, torch_device, data_dir, cache)
        try:
            run_dir = new_run_dir(out_root, experiment.name)
        except (ValueError, OSError) as err:
            raise RunSetupError(f"cannot make a run folder in {out_root}: {err}") from None
        write_json(run_dir / CONFIG, meta.to_json())
        write_json(run_dir / ENV, environment(torch_device, command))
        _work(experiment, meta, configs, run_dir, torch_device, progress, cache, shared, done=set(), fresh=True)
    return run_dir


def _unit_key(point: int, seed: int, unit: Unit) -> str:
    return json_key({"point": point, "seed": seed, "unit": unit})


def _work(experiment: Experiment, meta: RunMeta, configs: Sequence[Any], run_dir: Path, device: torch.device,
          progress: bool | None, cache: dict[str, Any], shared: SharedCache | None, done: set[str],
          fresh: bool) -> None:
    """Run every unit not in ``done``, then build the report; on an error, keep or remove the folder."""
    out_root = run_dir.parent.parent
    shared = shared if shared is not None else SharedCache()
    measured = 0
    log = MetricsWriter(run_dir / METRICS)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        with log:
            if fresh:
                log({"kind": "plan", "seeds": meta.seeds, "points": len(configs)})
            for point, config in enumerate(configs):
                def point_log(record: dict[str, Any], point: int = point) -> None:
                    nonlocal measured
                    log({**record, "point": point})
                    measured += 1

                for seed in meta.seeds:
                    for unit in experiment.unit_list(config):
                        if _unit_key(point, seed, unit) in done:
                            continue
                        log({"kind": "unit_start", "point": point, "seed": seed, "unit": unit})
                        engine.seed_everything(seed, meta.deterministic)
                        start = time.perf_counter()
                        artifacts = Artifacts(point_dir(run_dir, point, len(configs)))
                        experiment.train(config, RunContext(seed=seed, device=device, log=point_log, unit=unit,
                                                            artifacts=artifacts, shared=shared, cache=cache,
                                                            data_dir=meta.data_dir, progress=progress))
                        log({"kind": "unit_done", "point": point, "seed": seed, "unit": unit,
                             "seconds": round(time.perf_counter() - start, 3)})
                        measured += 1
    except BaseException as err:
        kept = not fresh or measured > 0
        if not kept:
            _remove(run_dir)
        if isinstance(err, KeyboardInterrupt):
            _tell_interrupted(run_dir if kept else None, out_root)
        if isinstance(err, NonFiniteDataError):
            raise RunSetupError(str(err)) from None
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    build_report(run_dir)
    write_index(out_root)


def resume_run(run_dir: Path, *, progress: bool | None = None, command: str | None = None,
               shared: SharedCache | None = None) -> Path:
    """Continue an interrupted run in ``run_dir``: drop what its unfinished unit wrote, run the units not yet done
    (with the run's own settings, seeds, device and threads), then build its report. A finished run only gets its
    report rebuilt.

    Raises:
        RunFilesError: the folder is not a run, or its files are damaged, or it was made before runs recorded
            their units of work.
        RunSetupError, FileNotFoundError: as :func:`run_experiment`, when the run cannot continue here.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFilesError(f"{run_dir} is not a folder; give the folder of a run, e.g. "
                            f"runs/EXPERIMENT/20250101-120000")
    meta = RunMeta.read(run_dir)
    try:
        experiment = get_experiment(meta.experiment)
        config: Any = config_from_dict(experiment.config_cls, meta.config)
    except ValueError as err:
        raise RunFilesError(f"{run_dir / CONFIG}: {err}") from None
    configs = _point_configs(experiment, config, meta.grid)
    path = run_dir / METRICS
    records = read_metrics(path, record_checker(experiment, configs))
    if not any(r["kind"] == "unit_start" for r in records):
        raise RunFilesError(f"{path} records no unit of work: the run was made before bnlab could resume runs, or "
                            f"stopped before its first unit; start it again with `bnlab run`")
    done = {_unit_key(r["point"], r["seed"], r["unit"]) for r in records if r["kind"] == "unit_done"}
    _drop_unfinished(path, done)
    try:
        device = torch.device(meta.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"the run trained on {meta.device}, and this PyTorch sees no CUDA GPU")
    except (RuntimeError, ValueError) as err:
        raise RunSetupError(str(err)) from None
    threads = min(meta.threads or experiment.threads, os.cpu_count() or 1)
    cache: dict[str, Any] = {}
    with _threads(threads):
        _prepare(experiment, configs, device, meta.data_dir, cache)
        env = read_json(run_dir / ENV) if (run_dir / ENV).is_file() else {}
        if isinstance(env, dict):
            env.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command})
            write_json(run_dir / ENV, env)
        _work(experiment, meta, configs, run_dir, device, progress, cache, shared, done=done, fresh=False)
    return run_dir


def _drop_unfinished(path: Path, done: set[str]) -> None:
    """Rewrite ``metrics.jsonl`` without the lines of the unit that was running when the run stopped (from its
    ``unit_start`` on) and without a last line cut short; the lines kept are left byte for byte."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = len(lines)
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            keep = min(keep, i)  # only a last line can be cut short (read_metrics checked the others)
            break
        if record.get("kind") == "unit_start" and \
                _unit_key(record["point"], record["seed"], record["unit"]) not in done:
            keep = i
            break
    text = "".join(lines[:keep])
    if text and not text.endswith("\n"):
        text += "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    print(f"bnlab: what the run measured is in {run_dir}; `bnlab resume {run_dir}` continues it, "
          f"`bnlab report {run_dir}` builds its report from what it measured", file=sys.stderr)
