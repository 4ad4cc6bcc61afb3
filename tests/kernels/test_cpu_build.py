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
import torch

from bnlab.kernels.cpu import build
from tolerances import assert_as_accurate_as_torch

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


# The portable build ($BNLAB_CPU_ARCH=generic): what a CPU without AVX-512 runs. Forward and backward of both
# layouts in float32 and bfloat16, with channel counts that leave a tail after the 16-lane vectors, against the
# float64 reference, as accurate as torch at the same dtype.
PORTABLE_CHILD = """
import sys

import torch

from bnlab.kernels.cpu import build
from bnlab.kernels.cpu.backend import CpuBackend

lib = build.load()
assert lib is not None, build.failure_reason()
backend, results = CpuBackend(), {"features": sorted(build.build_features(lib))}
for name, x, g, w, b in torch.load(sys.argv[1]):
    out = backend.forward_train(x, w, b, 1e-5)
    grads = backend.backward(g, x, out.mean, out.invstd, w, b)
    results[name] = (out.y, grads.dx, grads.dweight, grads.dbias)
torch.save(results, sys.argv[2])
"""


def _portable_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(15)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape, fmt in (((4, 37, 5, 6), torch.contiguous_format), ((4, 37, 5, 6), torch.channels_last),
                           ((64, 40), torch.contiguous_format)):
            x, g = (torch.randn(shape, generator=gen).mul(3).add(1).to(dtype).contiguous(memory_format=fmt)
                    for _ in range(2))
            w, b = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)
            cases.append((f"{dtype}-{'x'.join(map(str, shape))}-{fmt}", x, g, w, b))
    return cases


def test_the_portable_build_runs_without_avx512_and_is_as_accurate_as_torch(tmp_path: Path,
                                                                              built_library: Path) -> None:
    cases = _portable_cases()
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "BNLAB_CACHE_DIR": str(tmp_path / "cache"), build.ARCH_ENV: "generic"}
    result = subprocess.run([sys.executable, "-c", PORTABLE_CHILD, str(tmp_path / "cases.pt"),
                             str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["features"] == [], "the generic build must not use the AVX-512 paths"
    for name, x, g, w, b in cases:
        y, dx, dw, db = out[name]
        x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
        ref = torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True, eps=1e-5)
        ref.backward(g.double())
        xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
        theirs = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
        theirs.backward(g)
        assert_as_accurate_as_torch(y, theirs, ref, x.dtype, f"{name} y")
        assert_as_accurate_as_torch(dx, xt.grad, x64.grad, x.dtype, f"{name} dx")
        assert_as_accurate_as_torch(dw, wt.grad, w64.grad, torch.float32, f"{name} dgamma")
        assert_as_accurate_as_torch(db, bt.grad, b64.grad, torch.float32, f"{name} dbeta")


def test_an_unknown_arch_choice_turns_the_backend_off_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(build.ARCH_ENV, "pentium")
    assert build.load() is None
    assert "$BNLAB_CPU_ARCH must be one of native, generic, got 'pentium'" in str(build.failure_reason())
