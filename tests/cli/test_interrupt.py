"""Ctrl-C: ``bnlab: interrupted`` on one line and exit 130, whenever it comes, imports included.

Each case runs the installed console script in a fresh process and sends it SIGINT at a moment of its start or of
its work. The moments are found by what the process reports, not by the clock alone: with
``PYTHONPROFILEIMPORTTIME=1`` Python prints a line to stderr as each import finishes, so "just after bnlab.cli
was imported" is a line to wait for. (The first tens of milliseconds, Python's own start-up before any bnlab code
runs, are left out: nothing in the package can answer a signal there. Measured from the process start, a fixed
delay of 0.1 s still landed there on this busy 2-core machine.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cli.conftest import ToolDir

BNLAB = Path(sys.executable).with_name("bnlab")  # the console script pip installed next to this interpreter
IMPORT_TIME = "import time:"
TIMEOUT_S = 120


def _default_sigint() -> None:
    # A shell starts background jobs (`pytest ... &`, nohup) with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: a Ctrl-C before main() installs its handler would then be lost. Start as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Watched:
    """``bnlab doctor`` on the sleepy factory, its stderr read as it comes (the import lines would fill the pipe)."""

    def __init__(self, tool_dir: ToolDir) -> None:
        env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
        self.process = subprocess.Popen([str(BNLAB), "doctor", "--model", tool_dir.spec("sleepy"), "--data",
                                         "data.npz"], cwd=tool_dir.path, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
        self.imported: list[str] = []
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                if line.startswith(IMPORT_TIME):
                    self.imported.append(line.rsplit("|", 1)[-1].strip())
                else:
                    self.errors.append(line)
                self.changed.notify_all()

    def wait_for_import(self, module: str) -> None:
        with self.changed:
            done = self.changed.wait_for(lambda: module in self.imported or self.process.poll() is not None,
                                         timeout=TIMEOUT_S)
        assert done and module in self.imported, f"{module} was never imported: {''.join(self.errors)}"

    def finish(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr without the import lines) once the process has ended."""
        assert self.process.stdout is not None
        out = self.process.stdout.read()  # not communicate(): the reader thread owns stderr
        self.process.wait(TIMEOUT_S)
        self.reader.join(TIMEOUT_S)
        return self.process.returncode, out, "".join(self.errors)


@pytest.mark.parametrize(("after_import", "delay", "marker"), [
    # signal is imported as main() starts, to install its handler: the earliest moment bnlab's code is running.
    pytest.param("signal", 0.0, None, id="main-starting"),
    pytest.param("bnlab.cli.lab", 0.0, None, id="importing-numpy"),  # numpy makes an ImportError of the interrupt
    pytest.param("numpy", 0.0, None, id="importing-torch"),
    pytest.param("bnlab.cli", 0.3, None, id="0.3s-into-main"),
    pytest.param("bnlab.cli", 1.0, None, id="1s-into-main"),
    pytest.param("bnlab.cli", 0.0, "model-is-building", id="at-work-in-the-user-code"),
])
def test_ctrl_c_is_one_line_and_exit_130_at_any_moment(tool_dir: ToolDir, after_import: str, delay: float,
                                                       marker: str | None) -> None:
    if not BNLAB.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    watched = _Watched(tool_dir)
    try:
        watched.wait_for_import(after_import)
        time.sleep(delay)
        deadline = time.monotonic() + TIMEOUT_S
        while marker is not None and not (tool_dir.path / marker).exists():
            assert watched.process.poll() is None and time.monotonic() < deadline, "never reached the factory"
            time.sleep(0.05)
        assert watched.process.poll() is None, "the command ended before it was interrupted"
        watched.process.send_signal(signal.SIGINT)
        code, out, err = watched.finish()
    finally:
        if watched.process.poll() is None:
            watched.process.kill()
            watched.process.wait(TIMEOUT_S)
    assert (code, out, err) == (130, "", "bnlab: interrupted\n")
