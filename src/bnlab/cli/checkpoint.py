"""Models and weights for the command line, safely: build from ``module:factory``, load tensors only, write atomically.

- A checkpoint is read with ``torch.load(weights_only=True)`` (``.pt``, ``.pth``, ``.bin``, ...) or with
  ``safetensors`` (``.safetensors``). Neither unpickles arbitrary objects: a file that carries code is refused
  and nothing in it runs.
- Weights are checked against the model before loading, so a mismatch is reported in one line that names the
  keys and shapes, and the model is untouched when they do not fit.
- Output is written to a temporary file in the target directory and renamed over the target, so a failure
  never leaves a partial file behind; only a regular file that is not an input is ever replaced
  (:mod:`bnlab.cli.paths`).

Every problem a user can fix raises :class:`CheckpointError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.cli.paths import OutputPathError, resolve_output

__all__ = ["CheckpointError", "build_model", "check_output_path", "describe_error", "load_state_dict", "load_weights",
           "save_state_dict"]

SAFETENSORS = ".safetensors"
ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header: what torch.save writes
GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 64  # read to tell what a file that is not a checkpoint is
#: Keys under which training scripts commonly nest the state_dict in a checkpoint dictionary.
NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A model or weights file the user gave cannot be used; the message says why in one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_error(err: BaseException) -> str:
    """An exception raised by the user's code, in one line: its type and the first line of its message.

    sys.exit() in user code (at import, in a factory or a forward) would end the command silently with the
    user's exit code; it is reported like any other error.
    """
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r})"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {_one_line(first)}" if first else type(err).__name__


def build_model(spec: str) -> nn.Module:
    """Call ``factory`` from ``module`` for ``"module:factory"``; the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"--model must look like module:factory (e.g. mypkg.models:resnet18), got {spec!r}")
    with _importable(os.getcwd()):  # as with `python -m`, so that a models.py next to the user works
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as err:  # any error while importing user code is the user's to fix
            raise CheckpointError(f"cannot import {module_name!r} for --model {spec}: {describe_error(err)}"
                                  ) from err
        factory: Any = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise CheckpointError(f"module {module_name!r} has no attribute {attr!r} (from --model {spec})")
        if not callable(factory):
            raise CheckpointError(f"{spec} is not callable: --model names a function or class that builds the "
                                  f"model")
        try:
            model = factory()
        except (Exception, SystemExit) as err:
            raise CheckpointError(f"{spec}() failed: {describe_error(err)}") from err
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@contextlib.contextmanager
def _importable(directory: str) -> Iterator[None]:
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save``-d state_dict, without running any code."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"weights file {str(file)!r} does not exist" if not file.exists()
                              else f"weights path {str(file)!r} is not a file")
    if file.suffix == SAFETENSORS:
        return _load_safetensors(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are noise here
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's weights-only unpickler names the import it blocked ("Unsupported global: GLOBAL posix.system").
        blocked = [line for line in lines if "global" in line.lower()]
        if blocked:
            raise CheckpointError(
                f"refusing to load {str(file)!r}: it is not a plain state_dict ({_one_line(blocked[0])}); loading "
                f"it could run code. Save weights with torch.save(model.state_dict(), path) or as .safetensors"
            ) from None
        after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line]
        reason = _one_line(after[0] if after else (lines[-1] if lines else "unreadable"))[:200]
        if _is_raw_pickle(file) and "truncated" not in reason:
            raise CheckpointError(
                f"refusing to load {str(file)!r}: it is a pickle that the weights-only loader cannot read "
                f"({reason}), not a state_dict saved by torch.save; unpickling it in full could run code. Save "
                f"weights with torch.save(model.state_dict(), path) or as .safetensors"
            ) from None
        raise CheckpointError(f"cannot read {str(file)!r} as a PyTorch checkpoint: {_why_unreadable(file, reason)}"
                              ) from None
    except Exception as err:
        reason = f"{type(err).__name__}: {_one_line(str(err))[:200]}"
        raise CheckpointError(f"cannot read {str(file)!r} as a PyTorch checkpoint: {_why_unreadable(file, reason)}"
                              ) from None
    return _as_state_dict(loaded, file)


def _why_unreadable(file: Path, reason: str) -> str:
    """Why torch.load failed, from what the file is: empty, cut short, not a checkpoint at all, or ``reason``.

    torch.save writes a zip archive, whose directory is at its end (so a cut-short file has none); before torch
    1.6 it wrote a pickle (protocol 2 or later: it opens with the PROTO opcode). torch's own errors for other
    files ("KeyError: 101", "OSError: [Errno 22]") say nothing of this.
    """
    with open(file, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        return "the file is empty"
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(file):
            return ("it is truncated: it starts as torch.save's zip archive but the archive's end is missing (an "
                    "interrupted download, copy or save?)")
        return reason
    if head.startswith(pickle.PROTO):
        cut_short = any(sign in reason for sign in ("truncated", "EOF", "unpack requires a buffer"))
        return "it is truncated (the pickle of the old format ends early)" if cut_short else reason
    return (f"it is not one: torch.save writes a zip archive (a pickle before torch 1.6), and this file starts "
            f"with {_describe_head(head)}")


def _describe_head(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip's signature (decompress it first)"
    text = head.decode("utf-8", errors="replace")
    if all(c.isprintable() or c.isspace() for c in text):
        return f"text {_one_line(text)[:40]!r}"
    return f"the bytes {head[:8].hex(' ')}"


def _is_raw_pickle(file: Path) -> bool:
    """A pickle stream (it opens with the PROTO opcode) rather than torch.save's zip archive."""
    with open(file, "rb") as f:
        return f.read(1) == pickle.PROTO and not zipfile.is_zipfile(file)


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise CheckpointError("reading .safetensors needs the safetensors package: pip install safetensors") from err
    try:
        return load_file(str(file), device="cpu")
    except Exception as err:
        raise CheckpointError(f"cannot read {str(file)!r} as safetensors: {_one_line(str(err))[:200]}") from None


def _as_state_dict(loaded: Any, file: Path) -> dict[str, Tensor]:
    if isinstance(loaded, dict):
        for key in NESTED_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{str(file)!r} holds a {type(loaded).__name__}, not a state_dict (a dictionary of "
                              f"tensors); save one with torch.save(model.state_dict(), path)")
    wrong = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if wrong:
        raise CheckpointError(f"{str(file)!r} is not a state_dict: entry {wrong[0]!r} is not a tensor")
    return loaded


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str = "the weights") -> None:
    """Load ``state_dict`` into ``model`` strictly, after checking keys and shapes so errors fit in one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (file vs model)", mismatched)):
        if items:
            shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} do not fit the model: {'; '.join(problems)}; check that --model builds "
                              f"the architecture the weights were saved from")
    wrong_kind = [f"{k!r} is {_dtype(state_dict[k])} where the model has {_dtype(v)} ({why})"
                  for k, v in expected.items() if (why := _kind_mismatch(state_dict[k].dtype, v.dtype))]
    if wrong_kind:
        shown = "; ".join(wrong_kind[:3]) + (f"; and {len(wrong_kind) - 3} more" if len(wrong_kind) > 3 else "")
        raise CheckpointError(f"{source} hold tensors of the wrong kind for the model: {shown}; save the model's "
                              f"own weights, torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as err:
        raise CheckpointError(f"{source} do not fit the model: {_one_line(str(err))[:300]}") from None


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _kind_mismatch(stored: torch.dtype, wanted: torch.dtype) -> str | None:
    """Why a tensor of dtype ``stored`` must not be copied into one of dtype ``wanted``, or None if it may.

    Within a kind (floating, complex, integer, bool) the copy only changes precision, as loading half-precision
    weights into a float32 model does. Across kinds load_state_dict would convert silently and lose something.
    """
    def kind(dtype: torch.dtype) -> str:
        if dtype.is_complex:
            return "complex"
        if dtype.is_floating_point:
            return "floating"
        return "bool" if dtype == torch.bool else "integer"

    have, want = kind(stored), kind(wanted)
    if have == want:
        return None
    if have == "complex":
        return "loading would drop the imaginary part"
    if want == "integer":
        return "loading would truncate its values to integers"
    return f"the model holds {want} values there; loading would convert the file's {have} ones silently"


def check_output_path(path: str | os.PathLike[str],
                      inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> Path:
    """The regular file to write for ``--out path``, checked before any work (:func:`bnlab.cli.paths.resolve_output`).

    ``inputs``: (option, path) of the files the command reads, which the output must not replace.
    """
    try:
        return resolve_output(path, inputs=inputs)
    except OutputPathError as err:
        raise CheckpointError(str(err)) from None


def save_state_dict(state_dict: dict[str, Tensor], path: str | os.PathLike[str],
                    metadata: dict[str, str] | None = None,
                    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> Path:
    """Write tensors to ``path`` (.safetensors, else torch.save) through a temporary file and a rename.

    ``metadata`` (strings) goes into a .safetensors header; torch's format has no place for it. The file gets the
    permissions open() would give it. ``path`` is checked again as :func:`check_output_path` does (it may have
    changed during the work): only a regular file is replaced (a symlink's target), never one of ``inputs``.
    Returns the file written. Any failure raises CheckpointError and leaves ``path`` as it was.
    """
    out = check_output_path(path, inputs)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}  # no shared storage
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        if Path(path).suffix == SAFETENSORS:  # the format the user named, also through a symlink
            from safetensors.torch import save_file
            save_file(tensors, tmp, metadata=metadata)
        else:
            torch.save(tensors, tmp)
        os.chmod(tmp, _mode_for(out))
        os.replace(tmp, out)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, Exception):  # OSError (permissions, disk full) or torch's RuntimeError from the writer
            raise CheckpointError(f"cannot write {str(out)!r}: {describe_error(err)}") from err
        raise
    return out


def _mode_for(out: Path) -> int:
    """What open() would give: an existing file keeps its mode; a new one gets 0o666 less the umask.

    mkstemp creates the temporary file 0600 and the rename keeps that, so it is set explicitly.
    """
    try:
        return stat.S_IMODE(out.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read the umask is to set it; put back at once
        os.umask(umask)
        return 0o666 & ~umask
