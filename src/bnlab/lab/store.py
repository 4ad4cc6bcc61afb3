"""Files beside a run's JSON, and a cache shared across runs.

- :class:`Artifacts`: a run's ``artifacts/`` folder of arrays (``.npz``: histograms, image grids) and PyTorch
  objects (``.pt``: weights), written atomically and read back without unpickling code, so a report can be
  rebuilt from them as from ``metrics.jsonl``.
- :class:`SharedCache`: what a run computes once and later runs reuse (a reference classifier trained once),
  keyed by a name and the inputs that decide it, in ``$BNLAB_CACHE`` (default ``~/.cache/bnlab/lab``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ARTIFACTS", "CACHE_ENV", "Artifacts", "SharedCache", "default_cache_dir"]

ARTIFACTS = "artifacts"
CACHE_ENV = "BNLAB_CACHE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,120}$")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"an artifact or cache name is letters, digits and _ . = - (no folders), got {name!r}")
    return name


def _atomic(path: Path, write: Callable[[Any], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        write(f)
    os.replace(tmp, path)
    return path


class Artifacts:
    """The ``artifacts/`` folder of one run; names are plain file stems (``hist-gaussian-tanh``)."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / ARTIFACTS

    def path(self, name: str, suffix: str) -> Path:
        return self.folder / f"{_check_name(name)}{suffix}"

    def save_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        """Write ``name.npz`` holding ``arrays`` (numeric NumPy arrays)."""
        return _atomic(self.path(name, ".npz"), lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of ``name.npz``; FileNotFoundError when missing, ValueError when damaged."""
        path = self.path(name, ".npz")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path} is damaged ({err})") from None

    def save_torch(self, name: str, obj: Any) -> Path:
        """Write ``name.pt`` with ``torch.save`` (tensors, state dicts, lists and dicts of numbers)."""
        return _atomic(self.path(name, ".pt"), lambda f: torch.save(obj, f))

    def load_torch(self, name: str) -> Any:
        path = self.path(name, ".pt")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged file
            raise ValueError(f"{path} is damaged or not a PyTorch file ({type(err).__name__})") from None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if not p.name.startswith(".")) if self.folder.is_dir() \
            else []


def default_cache_dir() -> Path:
    """``$BNLAB_CACHE``, else ``$XDG_CACHE_HOME/bnlab/lab``, else ``~/.cache/bnlab/lab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnlab" / "lab"


class SharedCache:
    """Objects made once and reused across runs, each keyed by a name and the JSON inputs that decide it.

    ``get(name, inputs, make)`` returns the stored object when one was made from the same inputs, else calls
    ``make()``, stores its result and returns it. The object must be what ``torch.load(weights_only=True)``
    reads (tensors, state dicts, lists and dicts of numbers and text). A damaged entry is made again, with a
    warning. Writes are atomic, so two runs making the same entry at once both end with a whole file.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.events: list[dict[str, Any]] = []  # what this run took from the cache or added to it

    def path(self, name: str, inputs: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.folder / f"{_check_name(name)}-{digest}.pt"

    def get(self, name: str, inputs: Mapping[str, Any], make: Callable[[], Any]) -> Any:
        path = self.path(name, inputs)
        if path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                warnings.warn(f"the cached {name} in {path} is damaged ({type(err).__name__}); making it again",
                              RuntimeWarning, stacklevel=2)
            else:
                self.events.append({"name": name, "file": str(path), "made": False})
                return value
        value = make()
        _atomic(path, lambda f: torch.save(value, f))
        _atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps({"name": name, "inputs": inputs},
                                                                         indent=2, default=str).encode()))
        self.events.append({"name": name, "file": str(path), "made": True})
        return value
