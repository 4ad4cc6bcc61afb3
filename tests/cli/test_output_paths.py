"""``--out`` of ``bnlab fold | recalibrate``: only ever a regular file that is not an input, refused before any work.

The nodes are made inside the test's folder (``os.mkfifo``, ``os.mknod``): no test names a real device.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from cli.conftest import run_installed as main  # the installed command, in its own process

if TYPE_CHECKING:
    from cli.conftest import ToolDir

COMMANDS = [pytest.param("recalibrate", id="recalibrate"), pytest.param("fold", id="fold")]


def _run(tool_dir: ToolDir, command: str, out: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``command`` with ``--out out`` on the ``built`` factory; return its one-line error (exit 2, no output)."""
    code = main([command, "--model", tool_dir.spec("built"), "--weights", "weights.pt", "--data", "data.npz",
                 "--batch-size", "20", "--out", out])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("bnlab: error: "), captured.err
    assert not Path("model-was-built").exists(), "refused only after building the model"
    return captured.err


def _symlink(target: str) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        (folder / "link.pt").symlink_to(target)
        return "link.pt"
    return make


def _hard_link(folder: Path) -> str:
    os.link(folder / "weights.pt", folder / "hard.pt")
    return "hard.pt"


INPUTS = [
    pytest.param(lambda folder: "weights.pt", "--out 'weights.pt' is the --weights file 'weights.pt'",
                 id="the-weights"),
    pytest.param(lambda folder: "./weights.pt", "is the --weights file", id="the-weights-spelled-otherwise"),
    pytest.param(_symlink("weights.pt"), "(a symlink to", id="a-symlink-to-the-weights"),
    pytest.param(_hard_link, "--out 'hard.pt' is a hard link to the --weights file 'weights.pt'",
                 id="a-hard-link-to-the-weights"),
    pytest.param(lambda folder: "data.npz", "--out 'data.npz' is the --data file 'data.npz'", id="the-data"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("make_out", "message"), INPUTS)
def test_an_out_that_is_an_input_is_refused_before_any_work(tool_dir: ToolDir, capsys: pytest.CaptureFixture[str],
                                                            command: str, make_out: Callable[[Path], str],
                                                            message: str) -> None:
    weights, data = Path("weights.pt").read_bytes(), Path("data.npz").read_bytes()
    err = _run(tool_dir, command, make_out(tool_dir.path), capsys)
    assert message in err and "would replace the input" in err
    assert Path("weights.pt").read_bytes() == weights and Path("data.npz").read_bytes() == data


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "node")
    return folder / "node"


def _device(folder: Path) -> Path:
    # The numbers of /dev/null, but the node lives in the test's folder: writing to it would change nothing.
    try:
        os.mknod(folder / "node", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD), which this test process does not have")
    return folder / "node"


def _directory(folder: Path) -> Path:
    (folder / "node").mkdir()
    return folder / "node"


NODES = [
    pytest.param(_fifo, "node", "is a FIFO (named pipe), not a regular file", id="fifo"),
    pytest.param(_device, "node", "is a character device, not a regular file", id="device"),
    pytest.param(_directory, "node", "is a directory", id="directory"),
    pytest.param(_fifo, "link.pt", "(a symlink to", id="symlink-to-fifo"),
    pytest.param(_device, "link.pt", "is a character device", id="symlink-to-device"),
    pytest.param(_directory, "link.pt", "is a directory", id="symlink-to-directory"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("make_node", "out", "message"), NODES)
def test_only_a_regular_file_is_ever_replaced(tool_dir: ToolDir, capsys: pytest.CaptureFixture[str], command: str,
                                              make_node: Callable[[Path], Path], out: str, message: str) -> None:
    node = make_node(tool_dir.path)
    if out == "link.pt":
        (tool_dir.path / out).symlink_to(node)
    kind = stat.S_IFMT(node.lstat().st_mode)
    assert message in _run(tool_dir, command, out, capsys)
    assert stat.S_IFMT(node.lstat().st_mode) == kind  # still the node it was, never renamed over
    if out == "link.pt":
        assert (tool_dir.path / out).is_symlink()


@pytest.mark.parametrize(("out", "message"), [
    pytest.param("", "--out is empty; give a file name ending in .pt or .safetensors", id="empty"),
    pytest.param("new/", "--out 'new/' ends in a path separator, so it names a directory", id="trailing-slash"),
])
def test_an_out_that_is_no_file_name_says_so(tool_dir: ToolDir, capsys: pytest.CaptureFixture[str], out: str,
                                            message: str) -> None:
    assert message in _run(tool_dir, "recalibrate", out, capsys)
    assert not Path("new").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_through_a_symlink_writes_the_file_it_points_to(tool_dir: ToolDir, command: str) -> None:
    Path("kept").mkdir()
    Path("kept/result.pt").write_bytes(b"previous result")
    Path("latest.pt").symlink_to("kept/result.pt")
    assert main([command, "--model", tool_dir.spec(), "--weights", "weights.pt", "--data", "data.npz",
                 "--batch-size", "20", "--out", "latest.pt"]) == 0
    assert Path("latest.pt").is_symlink() and os.readlink("latest.pt") == "kept/result.pt"
    written = torch.load("kept/result.pt", weights_only=True)
    assert "1.running_mean" in written or "0.weight" in written
