"""The tour (``make run`` = ``bnlab run all --quick``): every registered experiment, then one page of verdicts.

Each experiment runs in its quick version (or its full one) into the runs folder, in the registry's order; one
whose data is not installed is skipped with the command that installs it, and one that cannot start is listed
with why. ``OUT/tour.html`` then lists each experiment with its verdicts, its wall time and a link to its report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bnlab.lab.html import badge, esc, page, table
from bnlab.lab.records import REPORT, RESULT, read_json
from bnlab.lab.registry import RunSetupError, experiment_names, get_experiment
from bnlab.lab.result import Result
from bnlab.lab.runner import make_config, run_experiment

__all__ = ["TOUR", "TourEntry", "run_tour", "write_tour_page"]

TOUR = "tour.html"


@dataclass(frozen=True)
class TourEntry:
    """One experiment of the tour: ``status`` is "ran", "skipped" (data missing) or "failed" (could not start)."""

    name: str
    summary: str
    status: str
    seconds: float
    run_dir: Path | None = None
    result: Result | None = None
    message: str = ""


def run_tour(out_root: Path, *, quick: bool = True, seeds: Sequence[int] = (0,), device: str = "auto",
             data_dir: str | None = None, threads: int | None = None, progress: bool | None = None,
             command: str | None = None, names: Sequence[str] | None = None,
             echo: Callable[[str], None] = print) -> Path:
    """Run every experiment (or ``names``), then write ``out_root/tour.html``; returns its path.

    ``echo`` receives one line per experiment as it finishes (what ran, its verdicts and time, or why not).
    """
    entries = []
    start = time.perf_counter()
    for name in names or experiment_names():
        experiment = get_experiment(name)
        began = time.perf_counter()
        try:
            config = make_config(experiment, quick=quick)
            run_dir = run_experiment(experiment, config, out_root=out_root, seeds=seeds, device=device,
                                     data_dir=data_dir, quick=quick, threads=threads, progress=progress,
                                     command=command)
        except FileNotFoundError as err:
            entry = TourEntry(name, experiment.summary, "skipped", time.perf_counter() - began, message=str(err))
        except RunSetupError as err:
            entry = TourEntry(name, experiment.summary, "failed", time.perf_counter() - began, message=str(err))
        else:
            result = Result.from_json(read_json(run_dir / RESULT))
            entry = TourEntry(name, experiment.summary, "ran", time.perf_counter() - began, run_dir, result)
        entries.append(entry)
        what = entry.result.verdict_line() if entry.result is not None else f"{entry.status}: {entry.message}"
        echo(f"{name}: {what} ({entry.seconds:.0f} s)")
    return write_tour_page(out_root, entries, time.perf_counter() - start, quick)


def write_tour_page(out_root: Path, entries: Sequence[TourEntry], seconds: float, quick: bool = True) -> Path:
    """``out_root/tour.html``: one row per experiment with its verdicts, its time and a link to its report."""
    out_root = Path(out_root)
    rows = []
    for e in entries:
        if e.result is not None and e.run_dir is not None:
            claims = "".join(f"<li>{badge(c.verdict)} {esc(c.claim)}</li>" for c in e.result.all_claims())
            verdicts = f"<b>{esc(e.result.verdict_line())}</b>" + ("" if e.result.complete else " (incomplete)")
            verdicts += f'<ul class="claims">{claims}</ul>'
            rel = e.run_dir.resolve().relative_to(out_root.resolve()).as_posix()
            link = f'<a href="{esc(rel)}/{REPORT}">{esc(rel)}</a>'
        else:
            verdicts = f"<b>{esc(e.status)}</b>: {esc(e.message)}"
            link = "—"
        rows.append([f"<code>{esc(e.name)}</code><br>{esc(e.summary)}", verdicts,
                     f'<span class="num">{e.seconds:.1f} s</span>', link])
    ran = sum(e.status == "ran" for e in entries)
    kind = "quick versions" if quick else "full versions"
    body = (f"<h1>bnlab: the experiments, judged by this machine</h1>"
            f'<p class="meta">{len(entries)} experiments ({kind}), {ran} ran, in {seconds:.0f} s of wall time on '
            f"{os.cpu_count()} CPU core(s); finished {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}. Each verdict comes "
            f"from the run's own numbers; a claim that does not reproduce says so, with the numbers, in its "
            f"report.</p>" + table(["experiment", "verdicts", "time", "report"], rows, raw=True)
            + '<p class="note">Verdicts: <span class="verdict ok">reproduced</span> '
              '<span class="verdict fail">not reproduced</span> <span class="verdict skip">not judged</span> '
              '<span class="verdict info">reported</span> (a measurement shown without a threshold). '
              'All runs: <a href="index.html">index.html</a>.</p>')
    out_root.mkdir(parents=True, exist_ok=True)
    path = out_root / TOUR
    path.write_text(page("bnlab tour", body), encoding="utf-8")
    return path
