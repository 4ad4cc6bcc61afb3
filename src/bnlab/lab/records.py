"""A run's folder and its files: ``config.json``, ``env.json``, ``metrics.jsonl`` (streamed), ``result.json``.

Everything a report needs is in these files, so a run can be re-plotted without re-training. The metrics are
written one JSON object per line and flushed at once, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = ["MetricsWriter", "RunFilesError", "environment", "new_run_dir", "read_json", "read_metrics",
           "source_checkout", "write_json"]

CONFIG, ENV, METRICS, RESULT, REPORT = "config.json", "env.json", "metrics.jsonl", "result.json", "report.html"


class RunFilesError(ValueError):
    """A run folder whose files are missing or unreadable; the message names the file and what to do."""


def new_run_dir(root: Path, experiment: str) -> Path:
    """A fresh ``root/experiment/YYYYmmdd-HHMMSS`` folder (``-2``, ``-3`` … when that second is taken)."""
    base = root / experiment / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)  # never leave half a file behind


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise RunFilesError(f"{path} is missing; is {path.parent} a bnlab run folder (made by `bnlab run`)?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFilesError(f"{path} is not valid JSON ({err}); the file is damaged") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line cut short by an interruption is dropped, others must parse."""
    if not path.is_file():
        raise RunFilesError(f"{path} is missing; is {path.parent} a bnlab run folder (made by `bnlab run`)?")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the run was stopped while writing its last line
            raise RunFilesError(f"{path}, line {number}, is not valid JSON; the file is damaged") from None
    return records


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes it, so nothing measured is lost."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self.written = 0  # records written through this writer

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def source_checkout(module_file: Path) -> Path | None:
    """The bnlab checkout ``module_file`` (``src/bnlab/lab/records.py``) belongs to, or None for an installed copy.

    Three levels above the package is the checkout only when its pyproject.toml names bnlab; otherwise (a wheel in
    site-packages, perhaps inside some other repository) git would report a revision that is not bnlab's.
    """
    repo = module_file.resolve().parents[3]
    try:
        pyproject = (repo / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return repo if re.search(r'^name\s*=\s*"bnlab"\s*$', pyproject, re.MULTILINE) else None


def _git_revision() -> dict[str, Any]:
    repo = source_checkout(Path(__file__))
    if repo is None:
        return {"revision": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                                  check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    revision = git("rev-parse", "HEAD")
    if revision is None:
        return {"revision": None, "dirty": None}
    return {"revision": revision, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def environment(device: torch.device, command: str | None = None) -> dict[str, Any]:
    """Versions, device and git revision: what someone needs to know to reproduce a run."""
    import numpy

    import bnlab

    info: dict[str, Any] = {
        "bnlab": bnlab.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "batch_norm_backends": bnlab.available_backends(device),
        "git": _git_revision(),
        "command": command,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
