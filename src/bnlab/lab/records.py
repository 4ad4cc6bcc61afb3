"""A run's folder and its files: ``config.json``, ``env.json``, ``metrics.jsonl`` (streamed), ``result.json``.

Everything a report needs is in these files (and ``artifacts/``, :mod:`bnlab.lab.store`), so a run can be
re-plotted without re-training. The metrics are written one JSON object per line and flushed at once, so an
interrupted run keeps what it measured. Reading checks the shape of every file (:class:`RunMeta`,
:func:`read_metrics` with a :mod:`~bnlab.lab.schema`, :func:`check_env`): a damaged or edited file is a
:class:`RunFilesError` naming the file and the field, never a traceback from deep inside a summary.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = ["CONFIG", "ENV", "METRICS", "REPORT", "RESULT", "MetricsWriter", "RunFilesError", "RunMeta",
           "check_env", "check_out_root", "environment", "new_run_dir", "read_json", "read_metrics",
           "source_checkout", "write_json"]

CONFIG, ENV, METRICS, RESULT, REPORT = "config.json", "env.json", "metrics.jsonl", "result.json", "report.html"
MAX_SEED = 2**64 - 1  # torch's generators take seeds in 0..2^64 − 1


class RunFilesError(ValueError):
    """A run folder whose files are missing, unreadable or of the wrong shape; the message names the file (and
    the field) and what to do."""


def check_out_root(root: Path) -> None:
    """Raise ValueError unless ``root`` is a folder or can become one: not a file, not a dangling symbolic link,
    nothing on its way that is a file."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.is_symlink() and not path.exists():
            raise ValueError(f"--out {str(root)!r}: {str(path)!r} is a symbolic link to "
                             f"{os.readlink(path)!r}, which does not exist; create that folder or choose another")
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == root else f"is inside {str(path)!r}, which is a file"
                raise ValueError(f"--out {str(root)!r} {what}, not a folder; choose a folder for the runs")
            return


def new_run_dir(root: Path, experiment: str, attempts: int = 1000) -> Path:
    """A fresh ``root/experiment/YYYYmmdd-HHMMSS`` folder (``-2``, ``-3`` … when that second is taken).

    Raises ValueError when ``root`` cannot hold folders (:func:`check_out_root`), and OSError when the folder
    cannot be made (no permission, a full disk); a name is taken only when a folder of that name exists.
    """
    check_out_root(root)
    parent = Path(root) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    base = parent / time.strftime("%Y%m%d-%H%M%S")
    path = base
    for n in range(2, attempts + 2):
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if not path.is_dir():  # a file or a link of that name: not a run, do not skip past it silently
                raise OSError(errno.EEXIST, f"{path} exists and is not a folder") from None
            path = base.with_name(f"{base.name}-{n}")
    raise OSError(errno.EEXIST, f"{attempts} run folders named {base.name}-* already exist in {parent}")


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
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunFilesError(f"{path} is not valid JSON ({err}); the file is damaged") from None


def read_metrics(path: Path, check: Callable[[Any], str | None] | None = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line cut short by an interruption is dropped, others must parse.

    ``check(record)`` says what is wrong with a record, or None (e.g. :func:`bnlab.lab.schema.why_wrong` against
    the experiment's schema); the first record that does not fit is a RunFilesError naming the file, the line
    and the field. Without ``check``, every record must still be a JSON object.
    """
    if not path.is_file():
        raise RunFilesError(f"{path} is missing; is {path.parent} a bnlab run folder (made by `bnlab run`)?")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):
                break  # the run was stopped while writing its last line
            raise RunFilesError(f"{path}, line {number}, is not valid JSON; the file is damaged") from None
        why = check(record) if check is not None else (
            None if isinstance(record, dict) else f"a record must be a JSON object, got {type(record).__name__}")
        if why is not None:
            raise RunFilesError(f"{path}, line {number}: {why}; the file is damaged or was edited")
        records.append(record)
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


def check_env(env: Any, path: Path) -> dict[str, Any]:
    """``env.json``'s content, checked: an object whose ``git``, when present, is an object (or null)."""
    if not isinstance(env, dict):
        raise RunFilesError(f"{path} must be a JSON object (as `bnlab run` writes it), got {type(env).__name__}")
    git = env.get("git")
    if git is not None:
        if not isinstance(git, dict):
            raise RunFilesError(f"{path}: field 'git' must be an object, got {git!r:.60}")
        if not isinstance(git.get("revision"), str | None) or not isinstance(git.get("dirty"), bool | None):
            raise RunFilesError(f"{path}: field 'git' must hold 'revision' (text or null) and 'dirty' (true, false "
                                f"or null)")
    return env


@dataclass(frozen=True)
class RunMeta:
    """``config.json``: what a run was asked to do (enough to resume it or rebuild its report).

    ``grid`` holds one mapping of settings per sweep point (``[{}]``: a single point, the configuration itself).
    """

    experiment: str
    config: Mapping[str, Any]
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    quick: bool = False
    quick_settings: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    data_dir: str | None = None
    deterministic: bool = False
    threads: int | None = None
    nproc: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "config": dict(self.config), "seeds": self.seeds, "grid": self.grid,
                "quick": self.quick, "quick_settings": dict(self.quick_settings), "device": self.device,
                "data_dir": self.data_dir, "deterministic": self.deterministic, "threads": self.threads,
                "nproc": self.nproc}

    @classmethod
    def read(cls, run_dir: Path) -> RunMeta:
        """The run's ``config.json``, checked field by field (RunFilesError naming the field)."""
        path = Path(run_dir) / CONFIG
        data = read_json(path)
        if not (isinstance(data, dict) and isinstance(data.get("experiment"), str)
                and isinstance(data.get("config"), dict)):
            raise RunFilesError(f'{path} is damaged: it must be a JSON object with "experiment" (a name) and '
                                f'"config" (an object of settings), as `bnlab run` writes it')

        def need(key: str, ok: Any, what: str, default: Any) -> Any:
            value = data.get(key, default)
            if not ok(value):
                raise RunFilesError(f"{path} is damaged: field {key!r} must be {what}, got {value!r:.60}")
            return value

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        seeds = need("seeds", lambda v: isinstance(v, list) and v and all(is_int(s) and 0 <= s <= MAX_SEED
                                                                          for s in v),
                     "a non-empty list of seeds (integers in 0..2^64 − 1)", [0])
        grid = need("grid", lambda v: isinstance(v, list) and v and all(isinstance(p, dict) for p in v),
                    "a non-empty list of objects (the sweep's points)", [{}])
        return cls(
            experiment=data["experiment"], config=data["config"], seeds=seeds, grid=grid,
            quick=need("quick", lambda v: isinstance(v, bool), "true or false", False),
            quick_settings=need("quick_settings", lambda v: isinstance(v, dict), "an object", {}),
            device=need("device", lambda v: isinstance(v, str), "text", "cpu"),
            data_dir=need("data_dir", lambda v: v is None or isinstance(v, str), "text or null", None),
            deterministic=need("deterministic", lambda v: isinstance(v, bool), "true or false", False),
            threads=need("threads", lambda v: v is None or (is_int(v) and v >= 1), "a positive integer or null",
                         None),
            nproc=need("nproc", lambda v: is_int(v) and v >= 1, "a positive integer (the --nproc count)", 1))
