"""The cpu backend's build, fallback and "auto" rules (its numbers are in the core contract tests)."""

from __future__ import annotations

import logging

import pytest
import torch

from bnlab.kernels import available_backends, clear_cache, get_backend, resolve
from bnlab.kernels.cpu import build


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    clear_cache()  # availability depends on the build, which the registry cannot watch: ask again
    yield
    monkeypatch.undo()
    clear_cache()


@pytest.mark.usefixtures("no_compiler")
def test_falls_back_with_the_reason_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bnlab.kernels.cpu"):
        names = available_backends("cpu")
        available_backends("cpu")
    assert "cpu" not in names and "native" in names
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    reason = get_backend("cpu").unavailable_reason(torch.device("cpu"), torch.float32)
    assert reason is not None and "g++" in reason
    assert resolve("auto", torch.device("cpu"), torch.float32, 1 << 24, True).name == "native"


def test_built_library_is_cached_by_content() -> None:
    if build.load() is None:
        pytest.skip(f"the cpu kernels cannot be built here: {build.failure_reason()}")
    built = list((build.cache_dir() / "cpu-kernels").glob("bnlab_cpu-*.so"))
    assert built, "the library lives in the cache directory, keyed by a hash"


@pytest.mark.usefixtures("known_auto_rules")
def test_auto_follows_the_measured_rules() -> None:
    cpu = torch.device("cpu")
    assert resolve("auto", cpu, torch.float32, 1 << 24, True).name == "cpu"
    assert resolve("auto", cpu, torch.float32, 1 << 10, True).name == "native"  # below the measured crossover
    assert resolve("auto", cpu, torch.float32, 1 << 24, False).name == "native"  # eval: None, never faster
    assert resolve("cpu", cpu, torch.float32, 1 << 10, False).name == "cpu"  # an explicit choice is kept
    assert resolve("auto", cpu, torch.float64, 1 << 24, True).name == "native"  # not measured: not chosen
    assert resolve("auto", cpu, torch.bfloat16, 1 << 24, True).name == "native"  # measured, never faster
    assert resolve("auto", cpu, torch.float32, 1 << 24, False, fused=True).name == "cpu"
    assert resolve("auto", cpu, torch.float32, 1 << 10, False, fused=True).name == "native"
    assert resolve("auto", cpu, torch.float32, 1 << 24, True, channels_last=True).name == "native"
    assert resolve("auto", cpu, torch.float32, 1 << 24, True, fused=True, channels_last=True).name == "cpu"


@pytest.mark.usefixtures("known_auto_rules")
def test_layers_pass_their_memory_format_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under rules where NCHW training goes to cpu and channels_last training to native, a layer called with each.
    import bnlab

    ran: list[str] = []
    for name in ("cpu", "native"):
        backend = get_backend(name)
        original = type(backend).forward_train
        monkeypatch.setattr(type(backend), "forward_train",
                            lambda self, *a, _o=original, **k: ran.append(self.name) or _o(self, *a, **k))
    monkeypatch.setattr(type(get_backend("native")), "provides_complete_op", False)  # see the contract calls
    layer = bnlab.BatchNorm2d(16)
    x = torch.randn(64, 16, 16, 16)  # 2^18 values: the rules' crossover for training
    layer(x)
    layer(x.to(memory_format=torch.channels_last))
    assert ran == ["cpu", "native"]


def _row(shape: tuple[int, ...], backend: str, ms: float, op: str = "fwd+bwd") -> dict[str, object]:
    return {"kind": "bn", "op": op, "dtype": "float32", "layout": "nchw", "shape": list(shape), "backend": backend,
            "ours_ms": ms}


def test_rules_take_the_smallest_size_from_which_cpu_always_won() -> None:
    from benchmarks.auto_rules import derive

    rows = [  # numel 100: cpu wins; 1000: one shape loses; 10^4 and 10^5: wins -> from 10^4 on
        _row((10, 10), "cpu", 1.0), _row((10, 10), "native", 2.0),
        _row((10, 100), "cpu", 1.0), _row((10, 100), "native", 1.01),  # within the 2% margin: not a win
        _row((100, 100), "cpu", 1.0), _row((100, 100), "native", 1.5),
        _row((100, 1000), "cpu", 1.0), _row((100, 1000), "native", 1.5),
        _row((1000, 100), "cpu", 1.0), _row((1000, 100), "native", 1.6),
        _row((50, 20), "cpu", 1.0), _row((50, 20), "native", 3.0),  # wins, but (10, 100) of its size did not
        _row((100, 1000), "cpu", 1.0, "eval"), _row((100, 1000), "native", 0.9, "eval"),  # largest lost: never
    ]
    rules = derive({"rows": rows})
    assert rules == {("float32", "eval", "nchw"): None, ("float32", "train", "nchw"): 10_000}


def test_committed_rules_are_those_of_the_committed_results() -> None:
    # One place per fact: auto_rules.py is generated from benchmarks/results/cpu-full.json, never edited apart.
    from benchmarks import auto_rules

    assert auto_rules.main(["--check"]) == 0, "run python -m benchmarks.auto_rules after refreshing the results"


@pytest.mark.usefixtures("known_auto_rules")
def test_fused_eval_runs_the_cpu_kernel_with_or_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    import bnlab

    backend = get_backend("cpu")
    calls = []
    original = type(backend).forward_eval

    def spy(self, x, *args):  # type: ignore[no-untyped-def]
        if len(args) > 5 and (args[5] is not None or args[6] != "identity"):  # a residual or an activation
            calls.append(1)
        return original(self, x, *args)

    monkeypatch.setattr(type(backend), "forward_eval", spy)
    layer = bnlab.nn.BatchNormAct2d(16, activation="relu").eval()
    x = torch.randn(64, 16, 32, 32)  # 2^20 values: above the rules' crossover
    with torch.no_grad():
        layer(x, residual=x)
        assert calls == [1]
        layer(x)  # the activation alone is work native does in a second pass
        assert calls == [1, 1]
        layer.activation = "identity"
        layer(x)  # plain eval: native
        assert calls == [1, 1]
    layer.activation = "relu"
    # Eval with gradients: the same kernel forward; the backward of the affine map and the activation is torch ops.
    layer(x).sum().backward()
    assert calls == [1, 1, 1] and layer.weight.grad is not None
    x.requires_grad_(True)
    y = layer(x)
    assert calls == [1, 1, 1, 1]
    y.sum().backward()
    theirs = torch.nn.BatchNorm2d(16).eval()
    theirs.load_state_dict(layer.state_dict())
    xt = x.detach().clone().requires_grad_()
    torch.relu(theirs(xt)).sum().backward()
    torch.testing.assert_close(x.grad, xt.grad)
    torch.testing.assert_close(layer.weight.grad, 2 * theirs.weight.grad)  # the first backward added one more


def test_channels_last_and_nchw_give_the_same_numbers() -> None:
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    x = torch.randn(4, 24, 9, 11)
    w, b = torch.randn(24), torch.randn(24)
    cpu = get_backend("cpu")
    a = cpu.forward_train(x, w, b, 1e-5)
    c = cpu.forward_train(x.contiguous(memory_format=torch.channels_last), w, b, 1e-5)
    torch.testing.assert_close(a.y, c.y, rtol=1e-5, atol=1e-5)
    assert c.y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("shape, channels_last", [((4, 37, 5, 3), False), ((4, 37, 5, 3), True),
                                                  ((64, 32, 8, 8), False), ((64, 32, 8, 8), True), ((3, 17), False)],
                         ids=["odd-nchw", "odd-nhwc", "vector-nchw", "vector-nhwc", "2d"])
def test_half_types_round_as_torch_does(dtype: torch.dtype, shape: tuple[int, ...], channels_last: bool) -> None:
    # The vectorized conversions against torch's own: round to nearest even, NaN and ±inf kept, bit for bit.
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    cpu = get_backend("cpu")
    x32 = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x32.view(-1)[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -0.0])
    x = x32.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    zeros, ones, third = torch.zeros(c), torch.ones(c), torch.full((c,), 1 / 3)
    y = cpu.elemt(x, zeros, ones, third, zeros)  # our kernel: (x − 0)·1·⅓ + 0
    expected = (x.float() * torch.tensor(1 / 3)).to(dtype)
    assert torch.equal(y.float().nan_to_num(7.0), expected.float().nan_to_num(7.0))
    assert int(torch.isnan(y).sum()) == 1


@pytest.mark.parametrize("shape, channels_last", [
    pytest.param((4, 6, 5, 7), False, id="nchw-one-group"),
    pytest.param((2, 3, 64, 64), False, id="nchw-several-chunks"),
    pytest.param((4, 6, 5, 7), True, id="nhwc-one-block"),
    pytest.param((8, 16, 16, 16), True, id="nhwc-blocks-and-threads"),
    pytest.param((600, 5), False, id="2d"),
])
def test_statistics_survive_inputs_near_1e19(shape: tuple[int, ...], channels_last: bool) -> None:
    # Issue 14: float32 values around 1e19 have squared deviations beyond float's 3.4e38; the float partial sums
    # overflowed, the variance became inf and the output silently 0 (ATen does the same). Every other channel
    # stays at O(1), so the float64 fallback must be per channel and leave the normal channels' numbers alone.
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    from tests.tolerances import KERNEL_FLOOR

    from bnlab.reference import algorithm1

    c = shape[1]
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(*shape, generator=gen)
    huge = [0, c - 1] if c > 2 else [0]
    for k in huge:
        x.select(1, k).mul_(1e19).add_(2e19 if k == 0 else -1e19)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    ref = algorithm1.forward_train(x.double(), w.double(), b.double(), 1e-5)
    cpu = get_backend("cpu")
    out = cpu.forward_train(x, w, b, 1e-5)
    assert torch.isfinite(out.y).all() and torch.isfinite(out.var).all()
    scale = ref.y.abs().max().item()
    assert (out.y.double() - ref.y).abs().max().item() <= KERNEL_FLOOR[torch.float32] * scale
    torch.testing.assert_close(out.mean.double(), ref.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.var.double(), ref.var, rtol=1e-5, atol=1e-6)
    # The statistics phase takes the same path. Its M2 = var·count is float32 by the contract, so it holds the
    # huge channels' M2 only while that stays below float's largest (docs/performance.md).
    moments = cpu.stats(x)
    torch.testing.assert_close(moments.mean.double(), ref.mean, rtol=1e-6, atol=1e-6)
    ref_m2 = ref.var * moments.count.double()
    fits = ref_m2 < torch.finfo(torch.float32).max
    torch.testing.assert_close(moments.m2.double()[fits], ref_m2[fits], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [pytest.param(False, id="nchw"), pytest.param(True, id="nhwc")])
def test_outputs_survive_values_near_float_max(channels_last: bool) -> None:
    # Values around 3e37: even a float sum of 16 of them (channels_last's shift) overflows. The variance itself
    # (1e74) has no float32 value, but the output needs only 1/√(σ² + ε), which has one.
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    from tests.tolerances import KERNEL_FLOOR

    from bnlab.reference import algorithm1

    gen = torch.Generator().manual_seed(37)
    x = torch.randn(4, 3, 6, 5, generator=gen)
    x[:, 1].mul_(1e37).add_(3e37)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = algorithm1.forward_train(x.double(), None, None, 1e-5)
    y = get_backend("cpu").forward_train(x, None, None, 1e-5).y
    assert torch.isfinite(y).all()
    assert (y.double() - ref.y).abs().max().item() <= KERNEL_FLOOR[torch.float32] * ref.y.abs().max().item()


UPDATE_CASES = [
    pytest.param(torch.float32, torch.float32, 0.1, id="float32-buffers"),
    pytest.param(torch.float64, torch.float64, 0.1, id="float64-buffers"),
    pytest.param(torch.float64, torch.float32, 0.3, id="float64-buffers-float32-stats"),
    pytest.param(torch.float32, torch.float32, 1.0, id="momentum-1-stores-the-batch"),
    pytest.param(torch.float16, torch.float32, 0.1, id="half-buffers-fall-back"),
]


@pytest.mark.parametrize(("buffer_dtype", "stats_dtype", "momentum"), UPDATE_CASES)
def test_the_running_update_in_one_call_is_the_formula(buffer_dtype: torch.dtype, stats_dtype: torch.dtype,
                                                       momentum: float) -> None:
    # The cpu backend folds a batch's statistics into the running buffers in one C call (bnlab_update_running):
    # within an ulp of the formula in float64, and bit for bit what bnlab._stats writes (every other backend's
    # update, and the same model's under torch.compile).
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    from bnlab._stats import update_running_stats

    count, channels = 7, 4099  # more than a vector's worth, and a tail
    mean, var = torch.randn(channels, dtype=stats_dtype), torch.rand(channels, dtype=stats_dtype) + 0.1
    running_mean = torch.randn(channels, dtype=buffer_dtype)
    running_var = (torch.rand(channels) + 0.5).to(buffer_dtype)
    expected_mean = ((1 - momentum) * running_mean.double() + momentum * mean.double()).to(buffer_dtype)
    expected_var = ((1 - momentum) * running_var.double()
                    + momentum * count / (count - 1) * var.double()).to(buffer_dtype)
    by_stats = running_mean.clone(), running_var.clone()
    update_running_stats(*by_stats, mean, var, count, momentum)
    versions = running_mean._version, running_var._version

    get_backend("cpu").update_running_stats(running_mean, running_var, mean, var, count, momentum)

    ulp = torch.finfo(buffer_dtype).eps
    assert torch.allclose(running_mean.double(), expected_mean.double(), rtol=ulp, atol=ulp)
    assert torch.allclose(running_var.double(), expected_var.double(), rtol=ulp, atol=ulp)
    assert torch.equal(running_mean, by_stats[0])
    assert torch.equal(running_var, by_stats[1])
    if momentum == 1.0:
        assert torch.equal(running_mean, mean.to(buffer_dtype))
    # Written through a pointer, the buffers still tell autograd they changed, as an in-place op does.
    assert running_mean._version > versions[0] and running_var._version > versions[1]


def test_the_running_update_takes_a_cumulative_factor_and_one_buffer() -> None:
    # momentum=None passes 1/t as a tensor, and a caller may update one buffer only: both as bnlab._stats does.
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    from bnlab._stats import update_running_stats

    mean, var = torch.randn(5), torch.rand(5)
    for factor in (torch.tensor(0.25, dtype=torch.float64), 0.25):
        ours = torch.randn(5)
        theirs = ours.clone()
        get_backend("cpu").update_running_stats(ours, None, mean, var, 4, factor)
        update_running_stats(theirs, None, mean, var, 4, factor)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)
