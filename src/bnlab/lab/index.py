"""``runs/index.html``: every run under a runs folder, newest first, linked to its report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bnlab.lab.config import ConfigError, config_from_dict
from bnlab.lab.html import esc, page
from bnlab.lab.records import CONFIG, REPORT, RESULT, RunMeta, read_json
from bnlab.lab.registry import get_experiment
from bnlab.lab.result import Result

__all__ = ["INDEX", "write_index"]

INDEX = "index.html"


def _index_row(run_dir: Path) -> str:
    """One run's row; raises on a folder whose files are not what ``bnlab run`` writes."""
    meta = RunMeta.read(run_dir)
    result = Result.from_json(read_json(run_dir / RESULT)) if (run_dir / RESULT).is_file() else None
    settings = ""
    try:
        experiment = get_experiment(meta.experiment)
        config: Any = config_from_dict(experiment.config_cls, meta.config)
        settings = " · ".join(f"{k} {v}" for k, v in experiment.columns(config).items())
    except (ValueError, ConfigError):
        pass  # an experiment this version does not know: listed without its settings
    rel = f"{run_dir.parent.name}/{run_dir.name}"
    link = (f'<a href="{esc(rel)}/{REPORT}">{esc(run_dir.name)}</a>' if (run_dir / REPORT).is_file()
            else esc(run_dir.name))
    status = result.verdict_line() if result is not None else "no result (interrupted or running)"
    if result is not None and not result.complete:
        status += " (incomplete)"
    kind = "quick" if meta.quick else "full"
    if len(meta.grid) > 1:
        kind += f", sweep of {len(meta.grid)}"
    cells = [esc(meta.experiment), link, esc(kind), esc(settings), esc(", ".join(map(str, meta.seeds))), esc(status)]
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
    head = "".join(f"<th>{c}</th>" for c in ("experiment", "run", "kind", "settings", "seeds", "verdicts"))
    runs = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
    body = (f'<h1>bnlab runs</h1><p class="meta">{runs} in {esc(root.resolve())}, newest first; '
            f"updated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    root.mkdir(parents=True, exist_ok=True)
    index = root / INDEX
    index.write_text(page("bnlab runs", body), encoding="utf-8")
    return index
