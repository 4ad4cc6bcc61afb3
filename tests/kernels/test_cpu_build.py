"""The cpu kernels' cache: a cached library is loaded only when it matches the size and checksum recorded when it
was built; anything else (cut short, empty, altered, or built before records existed) is rebuilt first.

A library cut short kills the process that maps it with SIGBUS, so every case runs in a fresh process. The
rebuild there copies the library this process built (the compiler itself is exercised by the whole suite, once
per machine), so that each case takes seconds rather than a compile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bnlab.kernels.cpu import build

CHILD = """
import shutil
import sys
from pathlib import Path

import torch

from bnlab.kernels.cpu import build

built, rebuilds = Path(sys.argv[1]), Path(sys.argv[2])


def copy_instead_of_compiling(compiler, output):
    with open(rebuilds, "a") as f:
        f.write("rebuilt\\n")
    shutil.copyfile(built, output)


build.compile_library = copy_instead_of_compiling
assert build.load() is not None, build.failure_reason()

import bnlab

x = torch.randn(8, 3, 5, 5)
y = bnlab.functional.batch_norm(x, None, None, training=True, backend="cpu")
torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, None, None, training=True))
print("cpu kernels ran")
"""


@pytest.fixture(scope="module")
def built_library() -> Path:
    """The library this machine built (in the default cache), with its build record."""
    if build.load() is None:
        pytest.skip(f"the cpu kernels cannot be built here: {build.failure_reason()}")
    compiler = build.find_compiler()
    assert compiler is not None
    library = build.library_file(compiler)
    assert build.mismatch(library) is None, "a fresh build matches its record"
    return library


def _cut(fraction: float) -> Callable[[Path], None]:
    def cut(library: Path) -> None:
        data = library.read_bytes()
        library.write_bytes(data[:int(len(data) * fraction)])
    return cut


def _flip_last_byte(library: Path) -> None:
    data = bytearray(library.read_bytes())
    data[-1] ^= 0xFF
    library.write_bytes(bytes(data))


def _no_record(library: Path) -> None:
    build.record_file(library).unlink()


CASES = [
    pytest.param(_cut(0.5), 1, id="truncated"),  # loading it as it is: SIGBUS
    pytest.param(_cut(0.0), 1, id="empty"),  # loading it as it is: "file too short", and the backend off for good
    pytest.param(_flip_last_byte, 1, id="same-size-other-checksum"),
    pytest.param(_no_record, 1, id="no-build-record"),  # cached by a bnlab that kept none
    pytest.param(lambda library: None, 0, id="intact"),  # loaded as it is: no rebuild on every start
]


@pytest.mark.parametrize(("damage", "rebuilds"), CASES)
def test_a_cached_library_is_verified_and_rebuilt_before_it_is_loaded(tmp_path: Path, built_library: Path,
                                                                     damage: Callable[[Path], None],
                                                                     rebuilds: int) -> None:
    cached = tmp_path / "cache" / "cpu-kernels" / built_library.name
    cached.parent.mkdir(parents=True)
    shutil.copyfile(built_library, cached)
    shutil.copyfile(build.record_file(built_library), build.record_file(cached))
    damage(cached)
    log = tmp_path / "rebuilds.log"
    log.touch()
    env = {**os.environ, "BNLAB_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", CHILD, str(built_library), str(log)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode} (-7 is SIGBUS): {result.stderr[-2000:]}"
    assert "cpu kernels ran" in result.stdout
    assert len(log.read_text().splitlines()) == rebuilds
    assert build.mismatch(cached) is None
    assert cached.read_bytes() == built_library.read_bytes()
    if rebuilds:
        assert "rebuilding the cached CPU kernels" in result.stderr
