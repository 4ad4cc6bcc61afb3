"""The registry: what can run where, what "auto" picks, and BNLAB_BACKEND."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import bnlab
from bnlab.kernels import (
    ENV_VAR,
    Backend,
    BackendUnavailableError,
    TrainForward,
    available_backends,
    backend_names,
    get_backend,
    registry,
    resolve,
)


def test_core_backends_are_registered_and_run_on_cpu() -> None:
    assert {"native", "reference"} <= set(backend_names())
    names = available_backends("cpu", torch.float32)
    assert {"native", "reference"} <= set(names)
    assert names.index("native") < names.index("reference"), "auto must prefer native over the slow reference"
    assert available_backends(torch.device("cpu"), torch.float64) == available_backends("cpu", torch.float64)


def test_no_backend_runs_on_integer_input() -> None:
    assert available_backends("cpu", torch.int64) == []
    with pytest.raises(BackendUnavailableError, match="floating-point"):
        resolve("native", torch.device("cpu"), torch.int64)


def test_auto_picks_the_first_available_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    first = available_backends("cpu", torch.float32)[0]
    assert resolve("auto", torch.device("cpu"), torch.float32).name == first


def test_environment_variable_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve("auto", torch.device("cpu"), torch.float32).name == "reference"
    assert resolve("native", torch.device("cpu"), torch.float32).name == "native"  # explicit wins
    calls = []
    original = get_backend("reference").forward_train

    def spy(*args: object, **kwargs: object) -> TrainForward:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(get_backend("reference"), "forward_train", spy)
    bnlab.BatchNorm1d(3).train()(torch.randn(4, 3))
    assert calls, "BNLAB_BACKEND=reference must route an auto module through the reference backend"


def test_environment_variable_with_unknown_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match=r"unknown batch-norm backend 'cuda-magic' \(from \$BNLAB_BACKEND\)"):
        bnlab.functional.batch_norm(torch.randn(4, 3), None, None, training=True)


def test_unknown_backend_name_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match=r"unknown batch-norm backend 'fastest'.*'native'"):
        bnlab.BatchNorm2d(3, backend="fastest")
    with pytest.raises(TypeError, match="backend must be a string"):
        bnlab.BatchNorm2d(3, backend=None)  # type: ignore[arg-type]


class _CudaOnly(Backend):
    """A stand-in backend that can only run on CUDA, to test explicit requests that cannot run."""

    name = "test-cuda-only"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        return None if device.type == "cuda" else "needs a CUDA device"

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        return 100

    def stats(self, x, mask=None):  # type: ignore[no-untyped-def]
        raise AssertionError("never called on CPU")

    def elemt(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("never called on CPU")

    def backward_reduce(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("never called on CPU")

    def backward_elemt(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("never called on CPU")


@pytest.fixture
def cuda_only_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    yield registry.register(_CudaOnly())
    registry.clear_cache()  # the stand-in leaves with the monkeypatch: forget what was answered with it


def test_explicit_backend_that_cannot_run_says_why(cuda_only_backend: Backend) -> None:
    x = torch.randn(4, 3)
    with pytest.raises(BackendUnavailableError, match=r"'test-cuda-only'.*cannot run on cpu.*needs a CUDA device"):
        bnlab.functional.batch_norm(x, None, None, training=True, backend="test-cuda-only")
    # ... while "auto" skips it even though it has the highest priority.
    assert "test-cuda-only" not in available_backends("cpu")
    assert available_backends("cuda")[0] == "test-cuda-only"
    bnlab.functional.batch_norm(x, None, None, training=True)


def test_register_refuses_duplicates_and_reserved_names(cuda_only_backend: Backend) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_CudaOnly())
    auto = _CudaOnly()
    auto.name = "auto"
    with pytest.raises(ValueError, match="other than 'auto'"):
        registry.register(auto)


def test_bnlab_exports_available_backends() -> None:
    assert bnlab.available_backends is available_backends


def test_answers_follow_the_environment_availability_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # triton's availability on CPU reads TRITON_INTERPRET: an answer given with it set must not outlive it.
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed here")
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve("triton", cpu, torch.float32).name == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        resolve("triton", cpu, torch.float32)
    assert "triton" not in available_backends("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve("triton", cpu, torch.float32).name == "triton"


def test_clear_cache_makes_the_registry_ask_again(monkeypatch: pytest.MonkeyPatch) -> None:
    native = get_backend("native")
    asked: list[str] = []
    original = type(native).unavailable_reason
    monkeypatch.setattr(type(native), "unavailable_reason",
                        lambda self, device, dtype: asked.append("native") or original(self, device, dtype))
    registry.clear_cache()
    resolve("native", torch.device("cpu"), torch.float16)
    resolve("native", torch.device("cpu"), torch.float16)
    assert asked == ["native"], "answered from the cache the second time"
    registry.clear_cache()
    resolve("native", torch.device("cpu"), torch.float16)
    assert asked == ["native", "native"]
