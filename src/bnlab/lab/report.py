"""``report.html``, a self-contained page for one run (figures embedded), and ``runs/index.html`` listing all runs.

Both are built from a run's files alone. ``build_report`` first (re)writes ``result.json`` from ``metrics.jsonl``,
so the verdicts always follow the measurements and the code that judges them, never an older summary.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnlab.lab.config import ConfigError, config_from_dict
from bnlab.lab.records import CONFIG, ENV, METRICS, REPORT, RESULT, RunFilesError, read_json, read_metrics, write_json
from bnlab.lab.registry import get_experiment

__all__ = ["INDEX", "build_report", "write_index"]

INDEX = "index.html"
_VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "fail", "not judged": "skip"}
_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .banner { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
table { border-collapse: collapse; margin: .6em 0; } th, td { border: 1px solid #ccc; padding: .3em .6em;
  text-align: left; vertical-align: top; } th { background: #f3f3f3; }
.verdict { font-weight: bold; white-space: nowrap; padding: .15em .5em; border-radius: .3em; color: #fff; }
.ok { background: #2e7d32; } .fail { background: #c62828; } .skip { background: #757575; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .93em; max-width: 60em; } code { background: #f3f3f3; padding: 0 .2em; }
"""


def _esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def _table(columns: Sequence[Any], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _well_formed(meta: Any) -> bool:
    """Whether a parsed config.json has the shape ``bnlab run`` writes: an experiment name and a settings object."""
    return isinstance(meta, dict) and isinstance(meta.get("experiment"), str) and isinstance(meta.get("config"), dict)


def _load(run_dir: Path) -> tuple[dict[str, Any], Any, Any, list[dict[str, Any]]]:
    if not run_dir.is_dir():
        raise RunFilesError(f"{run_dir} is not a folder; give the folder of a run, e.g. runs/fig1/20250101-120000")
    path = run_dir / CONFIG
    meta = read_json(path)
    if not _well_formed(meta):
        raise RunFilesError(f'{path} is damaged: it must be a JSON object with "experiment" (a name) and "config" (an '
                            f"object of settings), as `bnlab run` writes it")
    try:
        experiment = get_experiment(meta["experiment"])
    except ValueError as err:
        raise RunFilesError(f"{path}: {err}") from None
    try:
        config: Any = config_from_dict(experiment.config_cls, meta["config"])
    except ConfigError as err:
        raise RunFilesError(f"{path} does not fit this version of bnlab: {err}") from None
    return meta, experiment, config, read_metrics(run_dir / METRICS)


def _seeds(meta: Mapping[str, Any]) -> str:
    """The run's seeds as text ("" when not recorded); a ValueError when they are not a list."""
    seeds = meta.get("seeds", [])
    if not isinstance(seeds, list):
        raise ValueError(f"seeds must be a list, got {seeds!r}")
    return ", ".join(map(str, seeds))


def build_report(run_dir: Path) -> Path:
    """(Re)build the figures and ``report.html`` of ``run_dir`` from its files; returns the page's path.

    Raises :class:`RunFilesError` when the folder lacks a file the report needs, or holds too few measurements
    to summarize.
    """
    run_dir = Path(run_dir)
    meta, experiment, config, records = _load(run_dir)
    try:
        write_json(run_dir / RESULT, experiment.summarize(config, records))
    except ValueError as err:
        raise RunFilesError(f"{run_dir}: cannot summarize {METRICS}: {err}") from None
    result = read_json(run_dir / RESULT)
    env = read_json(run_dir / ENV) if (run_dir / ENV).is_file() else {}
    figures = experiment.plot(config, records, result, run_dir)

    defaults = dataclasses.asdict(experiment.config_cls())
    meta_line = [f"experiment <code>{_esc(experiment.name)}</code>", f"run <code>{_esc(run_dir.name)}</code>",
                 f"seeds {_esc(_seeds(meta) if isinstance(meta.get('seeds', []), list) else '?')}",
                 f"device {_esc(meta.get('device'))}"]
    if env.get("git", {}).get("revision"):
        dirty = " (with uncommitted changes)" if env["git"].get("dirty") else ""
        meta_line.append(f"git {_esc(env['git']['revision'][:10])}{dirty}")
    parts = [f"<h1>{_esc(result.get('title', experiment.summary))}</h1>",
             f'<p class="meta">{" · ".join(meta_line)}</p>']
    if meta.get("quick"):
        # The values this run used (the configuration), which --set may have changed after --quick.
        changed = ", ".join(f"{k} = {getattr(config, k)} (full run: {defaults[k]})" for k in experiment.quick)
        parts.append(f'<p class="banner"><b>Quick run</b> (<code>--quick</code>): {_esc(changed)}. '
                     f"The paper's numbers need the full run.</p>")
    if not result.get("complete", True):
        why = result.get("incomplete") or "training stopped before every network and seed finished"
        parts.append(f'<p class="banner"><b>Incomplete run</b>: {_esc(why)}. The verdicts, tables and figures use '
                     "only what finished; a claim that could not be judged says why.</p>")

    parts.append("<h2>Claims of the paper, judged by this run</h2>")
    rows = []
    for claim in result.get("claims", []):
        cls = _VERDICT_CLASS.get(claim["verdict"], "skip")
        rows.append(f'<tr><td>{_esc(claim["claim"])}</td><td><span class="verdict {cls}">{_esc(claim["verdict"])}'
                    f'</span></td><td>{_esc(claim["evidence"])}</td></tr>')
    parts.append('<table class="claims"><thead><tr><th>claim</th><th>verdict</th><th>evidence (this run\'s numbers)'
                 f'</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')

    parts.append("<h2>Figures</h2>")
    for fig in figures:
        png = base64.b64encode((run_dir / f"{fig.stem}.png").read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{_esc(fig.stem)}" src="data:image/png;base64,{png}">'
                     f'<figcaption>{_esc(fig.caption)} (<a href="{_esc(fig.stem)}.svg">SVG</a>)</figcaption></figure>')

    parts.append("<h2>Measurements</h2>")
    for table in result.get("tables", []):
        parts.append(f"<h3>{_esc(table['title'])}</h3>" + _table(table["columns"], table["rows"]))

    parts.append("<h2>Configuration</h2>")
    config_rows = [[k, v, "" if defaults.get(k) == v else f"changed (default {defaults.get(k)})"]
                   for k, v in dataclasses.asdict(config).items()]
    parts.append(_table(["setting", "value", ""], config_rows))
    parts.append("<h2>Environment</h2>")
    parts.append(_table(["", ""], [[k, v] for k, v in env.items()]))
    parts.append(f"<p>Files: <code>{CONFIG}</code>, <code>{ENV}</code>, <code>{METRICS}</code>, <code>{RESULT}</code>"
                 f", the figures as PNG and SVG. Rebuild this page with <code>bnlab report {_esc(run_dir)}</code>.</p>")
    page = run_dir / REPORT
    page.write_text(_page(f"bnlab {experiment.name} {run_dir.name}", "\n".join(parts)), encoding="utf-8")
    return page


def _verdicts(result: Mapping[str, Any]) -> str:
    claims = result.get("claims", [])
    judged = [c for c in claims if c["verdict"] != "not judged"]
    ok = sum(c["verdict"] == "reproduced" for c in judged)
    return f"{ok} of {len(judged)} claims reproduced" if judged else "no claim judged"


def _index_row(run_dir: Path) -> str:
    """One run's row in the index; raises on a folder whose files are not what ``bnlab run`` writes."""
    meta = read_json(run_dir / CONFIG)
    result = read_json(run_dir / RESULT) if (run_dir / RESULT).is_file() else None
    if not _well_formed(meta) or not isinstance(result, dict | None):
        raise ValueError(f"{run_dir} holds files of the wrong shape")
    config = meta["config"]
    steps = config.get("steps")
    rel = f"{run_dir.parent.name}/{run_dir.name}"
    link = (f'<a href="{_esc(rel)}/{REPORT}">{_esc(run_dir.name)}</a>' if (run_dir / REPORT).is_file()
            else _esc(run_dir.name))
    status = _verdicts(result) if result is not None else "no result (interrupted or running)"
    if result is not None and not result.get("complete", True):
        status += " (incomplete)"
    cells = [_esc(meta["experiment"]), link, "quick" if meta.get("quick") else "full",
             _esc(config.get("dataset", "")),
             _esc(f"{steps:,}" if isinstance(steps, int) and not isinstance(steps, bool) else ""),
             _esc(_seeds(meta)), _esc(status)]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_index(root: Path) -> Path:
    """Write ``root/index.html``: every run under ``root/EXPERIMENT/RUN``, newest first, linked to its report.

    A folder whose files cannot be read or have the wrong shape is left out (``bnlab report`` on it says why).
    """
    root = Path(root)
    rows = []
    for config_path in sorted(root.glob(f"*/*/{CONFIG}"), key=lambda p: p.parent.name, reverse=True):
        try:
            rows.append(_index_row(config_path.parent))
        except Exception:  # whatever is wrong with one folder, the index of the others is still written
            continue
    head = "".join(f"<th>{c}</th>" for c in ("experiment", "run", "kind", "data set", "steps", "seeds", "verdicts"))
    runs = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
    body = (f"<h1>bnlab runs</h1><p class=\"meta\">{runs} in {_esc(root.resolve())}, newest first; "
            f"updated {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    root.mkdir(parents=True, exist_ok=True)
    index = root / INDEX
    index.write_text(_page("bnlab runs", body), encoding="utf-8")
    return index
