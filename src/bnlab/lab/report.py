"""``report.html``, a self-contained page for one run (figures embedded), built from the run's files alone.

``build_report`` first (re)writes ``result.json`` from ``metrics.jsonl``, so the verdicts always follow the
measurements and the code that judges them, never an older summary. A sweep's page has a table of its points and
a section per point with that point's claims, figures and tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnlab.lab.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, format_value
from bnlab.lab.html import claims_table, esc, figure, page, table
from bnlab.lab.index import write_index
from bnlab.lab.records import (
    CONFIG,
    ENV,
    METRICS,
    REPORT,
    RESULT,
    RunFilesError,
    RunMeta,
    check_env,
    read_json,
    read_metrics,
    write_json,
)
from bnlab.lab.registry import Experiment, Figure, get_experiment, json_key
from bnlab.lab.result import PointResult, Result, ResultShapeError, Table
from bnlab.lab.schema import RUNNER_RECORDS, why_wrong
from bnlab.lab.store import ARTIFACTS

__all__ = ["build_report", "load_run", "point_dir", "record_checker", "summarize_run", "write_index"]


def record_checker(experiment: Experiment, configs: Sequence[Any]) -> Callable[[Any], str | None]:
    """What is wrong with a record of this run: the runner's kinds and the experiment's, for the record's point."""
    schemas = [{**RUNNER_RECORDS, **experiment.records(c)} for c in configs]

    def check(record: Any) -> str | None:
        point = record.get("point", 0) if isinstance(record, dict) else 0
        if isinstance(point, int) and not isinstance(point, bool) and not 0 <= point < len(schemas):
            return f"field 'point' must be in 0..{len(schemas) - 1} (the run's sweep points), got {point}"
        return why_wrong(record, schemas[point] if isinstance(point, int) and 0 <= point < len(schemas)
                         else schemas[0])
    return check


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run folder's files, read and checked: what a report is built from."""

    run_dir: Path
    meta: RunMeta
    experiment: Experiment
    config: Any
    configs: list[Any]  # one per sweep point
    records: list[dict[str, Any]]


def load_run(run_dir: Path) -> LoadedRun:
    """Read and check a run folder's ``config.json`` and ``metrics.jsonl`` (RunFilesError naming what is wrong)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFilesError(f"{run_dir} is not a folder; give the folder of a run, e.g. "
                            f"runs/EXPERIMENT/20250101-120000")
    meta = RunMeta.read(run_dir)
    path = run_dir / CONFIG
    try:
        experiment = get_experiment(meta.experiment)
    except ValueError as err:
        raise RunFilesError(f"{path}: {err}") from None
    try:
        config: Any = config_from_dict(experiment.config_cls, meta.config)
        configs = [apply_overrides(config, point) for point in meta.grid]
    except ConfigError as err:
        raise RunFilesError(f"{path} does not fit this version of bnlab: {err}") from None
    records = read_metrics(run_dir / METRICS, record_checker(experiment, configs))
    return LoadedRun(run_dir, meta, experiment, config, configs, records)


def _point_records(records: list[dict[str, Any]], point: int) -> list[dict[str, Any]]:
    """The records of one sweep point, with the plan (which belongs to every point)."""
    return [r for r in records if r.get("point", 0) == point or r["kind"] == "plan"]


def _unfinished(run: LoadedRun, point: int) -> list[str]:
    """The planned units of work of ``point`` without a ``unit_done`` record (none for a run made before runs
    recorded their units: its experiment's own account stands)."""
    if not any(r["kind"] == "unit_start" for r in run.records):
        return []
    done = {json_key((r["seed"], r["unit"])) for r in run.records if r["kind"] == "unit_done" and r["point"] == point}
    return [f"seed {seed} {format_unit(unit)}" for seed in run.meta.seeds
            for unit in run.experiment.unit_list(run.configs[point]) if json_key((seed, unit)) not in done]


def format_unit(unit: dict[str, Any]) -> str:
    return ", ".join(f"{k} {format_value(v)}" for k, v in unit.items()) or "(the whole run)"


def _summarize_point(run: LoadedRun, point: int) -> Result:
    """The experiment's summary of one point; marked incomplete when a planned unit did not finish and the
    experiment's own account does not already say so."""
    result = run.experiment.summarize(run.configs[point], _point_records(run.records, point))
    missing = _unfinished(run, point)
    if missing and result.complete:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        result = dataclasses.replace(result, complete=False, incomplete=f"{len(missing)} unit(s) of work did not "
                                                                        f"finish: {shown}")
    return result


def summarize_run(run: LoadedRun) -> Result:
    """The run's result: the experiment's summary, or for a sweep one per point and a table of the points."""
    exp = run.experiment
    if len(run.configs) == 1:
        return _summarize_point(run, 0)
    points, errors = [], []
    for p, settings in enumerate(run.meta.grid):
        try:
            result = _summarize_point(run, p)
        except ValueError as err:
            errors.append(str(err))
            result = Result(exp.name, exp.summary, claims=[], complete=False, incomplete=f"not measured: {err}")
        points.append(PointResult(settings, result))
    if len(errors) == len(points):
        raise ValueError(errors[0])
    axes = list(run.meta.grid[0])
    heads = [list(exp.headline(p.result)) for p in points]
    head = max(heads, key=len)
    rows = [[f"{i}", *(format_value(p.settings[a]) for a in axes), *(exp.headline(p.result).get(h, "—") for h in head),
             p.result.verdict_line() + ("" if p.result.complete else " (incomplete)")] for i, p in enumerate(points)]
    sweep = Table(f"Sweep over {', '.join(axes)} ({len(points)} points)", ["point", *axes, *head, "verdicts"], rows)
    missing = [f"point {i}: {p.result.incomplete}" for i, p in enumerate(points) if not p.result.complete]
    return Result(exp.name, f"Sweep: {points[0].result.title}", claims=[], tables=[sweep],
                  complete=not missing, incomplete="; ".join(missing) or None, points=points)


def point_dir(run_dir: Path, point: int, points: int) -> Path:
    """Where a point's figures go: the run folder itself, or ``point-N/`` in a sweep."""
    return run_dir if points == 1 else run_dir / f"point-{point}"


def build_report(run_dir: Path) -> Path:
    """(Re)build ``result.json``, the figures and ``report.html`` of ``run_dir`` from its files; returns the page.

    Raises :class:`RunFilesError` when the folder lacks a file the report needs, holds one of the wrong shape,
    or holds too few measurements to summarize.
    """
    run = load_run(run_dir)
    run_dir = run.run_dir
    try:
        result = summarize_run(run)
    except ValueError as err:
        raise RunFilesError(f"{run_dir}: cannot summarize {METRICS}: {err}") from None
    write_json(run_dir / RESULT, result.to_json())
    try:  # the page shows what result.json holds
        result = Result.from_json(read_json(run_dir / RESULT), str(run_dir / RESULT))
    except ResultShapeError as err:
        raise RunFilesError(str(err)) from None
    env = check_env(read_json(run_dir / ENV), run_dir / ENV) if (run_dir / ENV).is_file() else {}
    results = [p.result for p in result.points] if result.points else [result]
    sections = []
    for p, (config, res) in enumerate(zip(run.configs, results, strict=True)):
        out = point_dir(run_dir, p, len(run.configs))
        out.mkdir(exist_ok=True)
        figures = run.experiment.plot(config, _point_records(run.records, p), res, out)
        sections.append(_body(res, figures, out, run_dir, heading="h3" if len(run.configs) > 1 else "h2"))
    parts = [f"<h1>{esc(result.title)}</h1>", f'<p class="meta">{" · ".join(_meta_line(run, env))}</p>',
             *_banners(run, result)]
    if result.points:
        parts += ["<h2>Sweep</h2>", *(_table(t) for t in result.tables),
                  '<p class="note">Points: ' + " · ".join(f'<a href="#point-{p}">{p}</a>'
                                                          for p in range(len(result.points))) + "</p>"]
        for p, (point, section) in enumerate(zip(result.points, sections, strict=True)):
            settings = ", ".join(f"{k} = {format_value(v)}" for k, v in point.settings.items())
            parts += [f'<h2 id="point-{p}">Point {p}: {esc(settings)}</h2>', section]
    else:
        parts.append(sections[0])
    parts += _configuration(run, env)
    page_path = run_dir / REPORT
    page_path.write_text(page(f"bnlab {run.experiment.name} {run_dir.name}", "\n".join(parts)), encoding="utf-8")
    return page_path


def _table(t: Table, heading: str = "h3") -> str:
    note = f'<p class="note">{esc(t.note)}</p>' if t.note else ""
    return f"<{heading}>{esc(t.title)}</{heading}>" + table(t.columns, t.rows) + note


def _body(result: Result, figures: list[Figure], out: Path, run_dir: Path, heading: str = "h2") -> str:
    """A result's claims, figures and tables, under ``heading`` (h3 inside a sweep point's section)."""
    sub_heading = "h3" if heading == "h2" else "h4"
    parts = [f"<{heading}>Claims of the paper, judged by this run</{heading}>", claims_table(result.claims),
             f"<{heading}>Figures</{heading}>"]
    for fig in figures:
        link = (out / f"{fig.stem}.svg").relative_to(run_dir).as_posix()
        parts.append(figure(out / f"{fig.stem}.png", fig.caption, link))
    parts.append(f"<{heading}>Measurements</{heading}>")
    parts += [_table(t, sub_heading) for t in result.tables]
    return "\n".join(parts)


def _meta_line(run: LoadedRun, env: dict[str, Any]) -> list[str]:
    seconds = sum(r["seconds"] for r in run.records if r["kind"] == "unit_done")
    line = [f"experiment <code>{esc(run.experiment.name)}</code>", f"run <code>{esc(run.run_dir.name)}</code>",
            f"seeds {esc(', '.join(map(str, run.meta.seeds)))}", f"device {esc(run.meta.device)}",
            f"training {seconds:.1f} s" + (f" on {run.meta.threads} thread{'s' * (run.meta.threads > 1)}"
                                           if run.meta.threads else "")]
    git = env.get("git") or {}
    if git.get("revision"):
        line.append(f"git {esc(git['revision'][:10])}" + (" (with uncommitted changes)" if git.get("dirty") else ""))
    return line


def _banners(run: LoadedRun, result: Result) -> list[str]:
    parts = []
    if run.meta.quick:
        defaults = config_to_dict(run.experiment.config_cls())
        ran = config_to_dict(run.config)
        # The values this run used (the configuration), which --set may have changed after --quick.
        changed = ", ".join(f"{k} = {format_value(ran[k])} (full run: {format_value(defaults[k])})"
                            for k in run.experiment.quick if k in ran)
        parts.append(f'<p class="banner"><b>Quick run</b> (<code>--quick</code>): {esc(changed)}. '
                     f"The paper's numbers need the full run.</p>")
    if not result.complete:
        why = result.incomplete or "training stopped before every unit of work and seed finished"
        parts.append(f'<p class="banner"><b>Incomplete run</b>: {esc(why)}. The verdicts, tables and figures use '
                     f"only what finished; a claim that could not be judged says why. <code>bnlab resume "
                     f"{esc(run.run_dir)}</code> continues an interrupted run.</p>")
    return parts


def _configuration(run: LoadedRun, env: dict[str, Any]) -> list[str]:
    defaults = config_to_dict(run.experiment.config_cls())
    rows = [[k, format_value(v), "" if defaults.get(k) == v else f"changed (default {format_value(defaults.get(k))})"]
            for k, v in config_to_dict(run.config).items()]
    count = sum(1 for p in run.run_dir.glob(f"**/{ARTIFACTS}/*") if p.is_file())
    extra = f", <code>{ARTIFACTS}/</code> ({count} files)" if count else ""
    return ["<h2>Configuration</h2>", table(["setting", "value", ""], rows),
            "<h2>Environment</h2>", table(["", ""], [[k, v] for k, v in env.items()]),
            f"<p>Files: <code>{CONFIG}</code>, <code>{ENV}</code>, <code>{METRICS}</code>, <code>{RESULT}</code>"
            f"{extra}, the figures as PNG and SVG. Rebuild this page with "
            f"<code>bnlab report {esc(run.run_dir)}</code>.</p>"]
