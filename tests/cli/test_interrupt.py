"""Ctrl-C: ``bnlab: interrupted`` on one line and exit 130, whenever it comes, imports included.

Each case runs the installed console script in a fresh process and sends it SIGINT: after a fixed delay (while
Python imports bnlab, torch and numpy, which takes a second or more) or once the command is at work in the
user's code. The first few tens of milliseconds belong to Python's own start-up, before any bnlab code runs:
nothing in the package can answer a signal there, so the earliest delay leaves them out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cli.conftest import ToolDir

BNLAB = Path(sys.executable).with_name("bnlab")  # the console script pip installed next to this interpreter
MARKER = "model-is-building"  # left by the ``sleepy`` factory just before it sleeps


def _interrupt(tool_dir: ToolDir, when: float | str) -> tuple[int, str, str]:
    """Start ``bnlab doctor`` on the sleepy factory, send SIGINT ``when`` seconds later (or once the marker file
    is there), and return (exit code, stdout, stderr)."""
    if not BNLAB.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    process = subprocess.Popen([str(BNLAB), "doctor", "--model", tool_dir.spec("sleepy"), "--data", "data.npz"],
                               cwd=tool_dir.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if isinstance(when, str):
            deadline = time.monotonic() + 120
            while not (tool_dir.path / when).exists():
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the command never reached the model factory"
                time.sleep(0.05)
        else:
            time.sleep(when)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@pytest.mark.parametrize("when", [
    pytest.param(0.1, id="0.1s-python-done-bnlab-starting"),
    pytest.param(0.3, id="0.3s-importing"),
    pytest.param(1.0, id="1s-importing"),
    pytest.param(MARKER, id="at-work-in-the-user-code"),
])
def test_ctrl_c_is_one_line_and_exit_130_at_any_moment(tool_dir: ToolDir, when: float | str) -> None:
    code, out, err = _interrupt(tool_dir, when)
    assert (code, out, err) == (130, "", "bnlab: interrupted\n")
