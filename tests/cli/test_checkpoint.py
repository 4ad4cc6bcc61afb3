"""bnlab.cli.checkpoint: writes are atomic, leave nothing behind on failure, and give files ordinary permissions."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from bnlab.cli.checkpoint import CheckpointError, save_state_dict

STATE = {"weight": torch.arange(6.0).reshape(2, 3)}


@pytest.mark.parametrize("existing", [pytest.param(None, id="new-file"), pytest.param(0o604, id="overwritten")])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_written_files_get_ordinary_permissions(tmp_path: Path, existing: int | None, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    if existing is not None:
        out.write_bytes(b"old")
        out.chmod(existing)
    umask = os.umask(0o027)
    try:
        save_state_dict(STATE, out)
    finally:
        os.umask(umask)
    # As open() would: a new file by the umask, an overwritten one keeps its mode (mkstemp alone gives 0600).
    assert out.stat().st_mode & 0o777 == (0o640 if existing is None else existing)


def _fail_mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
    raise PermissionError(13, "Permission denied")


def _fail_save_after_writing(obj: object, path: str) -> None:
    Path(path).write_bytes(b"half a checkpoint")
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def _fail_replace(source: str, target: object) -> None:
    raise OSError(16, "Device or resource busy")


@pytest.mark.parametrize(("owner", "name", "replacement", "message"), [
    pytest.param(os, "access", lambda path, mode: False, "is not writable", id="unwritable-directory"),
    pytest.param(tempfile, "mkstemp", _fail_mkstemp, "PermissionError: [Errno 13] Permission denied",
                 id="temporary-file-refused"),
    pytest.param(torch, "save", _fail_save_after_writing, "RuntimeError: PytorchStreamWriter failed",
                 id="save-fails-after-writing"),
    pytest.param(os, "replace", _fail_replace, "OSError: [Errno 16] Device or resource busy", id="rename-fails"),
])
def test_a_failed_write_is_a_checkpoint_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 owner: object, name: str, replacement: object,
                                                                 message: str) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous content")
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(CheckpointError, match="cannot write") as caught:
        save_state_dict(STATE, out)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.undo()
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]  # no temporary file left behind


def test_an_interrupted_write_leaves_nothing_and_is_not_swallowed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj: object, path: str) -> None:
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(STATE, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []
