"""Shared fixtures: the backends every core test runs against, and a fixed seed per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

# Without a GPU the Triton backend runs under Triton's interpreter on CPU tensors, so the whole suite tests it.
# The variable must be set before anything imports triton, hence here, at the top of the root conftest.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from bnlab.kernels import available_backends, get_backend

# The native backend answers eager calls with ATen's complete op; "native:contract" turns that off so the
# three contract calls (the path torch.compile takes) are tested in eager mode as well.
CONTRACT_SUFFIX = ":contract"


def cpu_backend_ids(dtype: torch.dtype = torch.float32) -> list[str]:
    """Every backend that can run on this CPU, plus the contract-path variant of those with a complete op."""
    ids = []
    for name in available_backends("cpu", dtype):
        ids.append(name)
        if get_backend(name).provides_complete_op:
            ids.append(name + CONTRACT_SUFFIX)
    return ids


@pytest.fixture(params=cpu_backend_ids())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A backend name to pass as ``backend=``; contract variants have their complete op switched off."""
    name: str = request.param
    if name.endswith(CONTRACT_SUFFIX):
        name = name.removesuffix(CONTRACT_SUFFIX)
        monkeypatch.setattr(type(get_backend(name)), "provides_complete_op", False)
    return name


def require(backend: str, dtype: torch.dtype, device: str = "cpu") -> None:
    """Skip, saying why, when ``backend`` cannot run ``dtype`` inputs on ``device`` (triton has no float64)."""
    reason = get_backend(backend).unavailable_reason(torch.device(device), dtype)
    if reason is not None:
        pytest.skip(f"{backend} cannot run {dtype} on {device}: {reason}")


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    # A benchmark's main() sets torch's thread count for the process; the tests after it must not inherit it
    # (ATen's channels_last statistics round differently on one thread, beyond the suite's torch tolerance).
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def nan_fill() -> Iterator[None]:
    """Make torch.empty fill new tensors with NaN, so an output element a kernel never writes fails the test."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    yield
    torch.use_deterministic_algorithms(previous)
    torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


#: A rules table of known content for ``backend="auto"``, so that tests of how auto uses its rules (and of what
#: happens once it switches to the cpu backend) do not move with each benchmark run, which regenerates the
#: committed rules (src/bnlab/kernels/cpu/auto_rules.py). From 2^18 elements auto trains NCHW float32 on cpu.
KNOWN_AUTO_RULES = {
    ("float32", "train", "nchw"): 1 << 18,
    ("float32", "train", "nhwc"): None,
    ("float32", "eval", "nchw"): None,
    ("float32", "eval", "nhwc"): None,
    ("float32", "fused_train", "nchw"): 1 << 18,
    ("float32", "fused_train", "nhwc"): 1 << 18,
    ("float32", "fused_eval", "nchw"): 1 << 18,
    ("float32", "fused_eval", "nhwc"): 1 << 18,
    ("bfloat16", "train", "nchw"): None,
}


@pytest.fixture
def known_auto_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``backend="auto"`` decides with :data:`KNOWN_AUTO_RULES` (skips where the cpu backend cannot be built)."""
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    from bnlab.kernels import clear_cache
    from bnlab.kernels.cpu import auto_rules

    monkeypatch.setattr(auto_rules, "MIN_NUMEL", KNOWN_AUTO_RULES)
    clear_cache()  # the registry keeps its answers: ask again under these rules
    yield
    monkeypatch.undo()
    clear_cache()
