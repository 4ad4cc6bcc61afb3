"""The command-line tests use the lab's finished smoke run and its one-thread setting, and a model-tools folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from data.conftest import _one_thread  # noqa: F401
from lab.conftest import fig1_run  # noqa: F401

#: A factories module for ``--model``: ``built`` leaves a marker file when called (to tell whether a command did
#: any work), ``sleepy`` leaves one and then sleeps (a command busy in the user's code, to interrupt).
TOOL_FACTORIES = textwrap.dedent('''
    import pathlib
    import time

    import torch

    def small_cnn():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))

    def built():
        pathlib.Path("model-was-built").touch()
        return small_cnn()

    def sleepy():
        pathlib.Path("model-is-building").touch()
        time.sleep(120)
''')


class ToolDir:
    """A folder with ``tool_factories.py``, weights ``weights.pt`` and data ``data.npz`` (x: 40 × 1 × 6 × 6)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.module = f"tool_factories_{path.name.replace('-', '_')}"  # unique: imported in-process by main()
        (path / f"{self.module}.py").write_text(TOOL_FACTORIES)
        namespace: dict[str, object] = {}
        exec(TOOL_FACTORIES, namespace)
        model = namespace["small_cnn"]()  # type: ignore[operator]
        torch.save(model.state_dict(), path / "weights.pt")
        x = torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
        np.savez(path / "data.npz", x=x.numpy())

    def spec(self, factory: str = "small_cnn") -> str:
        return f"{self.module}:{factory}"


@pytest.fixture
def tool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ToolDir]:
    """A :class:`ToolDir` in a temporary folder, which is the current directory during the test."""
    monkeypatch.chdir(tmp_path)
    folder = ToolDir(tmp_path)
    yield folder
    sys.modules.pop(folder.module, None)


#: The console script pip installed next to this interpreter (issue 14: CLI tests run the installed command).
INSTALLED_BNLAB = Path(sys.executable).with_name("bnlab")


def run_installed(argv: list[str], timeout: float = 300) -> int:
    """``bnlab ARGV`` as the installed console script, in a fresh process in the current folder; its stdout and
    stderr are passed on to this process's (so ``capsys`` reads them) and its exit code returned."""
    command = [str(INSTALLED_BNLAB)] if INSTALLED_BNLAB.exists() else [
        sys.executable, "-c", "import sys; from bnlab.cli import main; sys.exit(main())"]
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode
