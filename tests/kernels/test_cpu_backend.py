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


def test_auto_is_size_and_mode_aware() -> None:
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    cpu = torch.device("cpu")
    assert resolve("auto", cpu, torch.float32, 1 << 24, True).name == "cpu"
    assert resolve("auto", cpu, torch.float32, 1 << 10, True).name == "native"  # small: Python overhead wins
    assert resolve("auto", cpu, torch.float32, 1 << 24, False).name == "native"  # eval: ATen's single pass
    assert resolve("cpu", cpu, torch.float32, 1 << 10, False).name == "cpu"  # an explicit choice is kept
    assert resolve("auto", cpu, torch.float64, 1 << 24, True).name == "native"  # not preferred for float64
    assert resolve("auto", cpu, torch.bfloat16, 1 << 24, True).name == "native"  # nor bfloat16 (0.9x ATen's)
    # Fused eval (residual or activation): one pass against native's three, so cpu where it is large enough.
    assert resolve("auto", cpu, torch.float32, 1 << 24, False, fused=True).name == "cpu"
    assert resolve("auto", cpu, torch.float32, 1 << 10, False, fused=True).name == "native"
    # Plain channels_last training: ATen's vectorized kernel is as fast, so native; fused, cpu still wins.
    assert resolve("auto", cpu, torch.float32, 1 << 24, True, channels_last=True).name == "native"
    assert resolve("auto", cpu, torch.float32, 1 << 24, True, fused=True, channels_last=True).name == "cpu"


def test_layers_pass_their_memory_format_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain channels_last training stays on native (ATen's vectorized kernel is as fast there); NCHW goes to cpu.
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is unavailable here")
    import bnlab

    ran: list[str] = []
    for name in ("cpu", "native"):
        backend = get_backend(name)
        original = type(backend).forward_train
        monkeypatch.setattr(type(backend), "forward_train",
                            lambda self, *a, _o=original, **k: ran.append(self.name) or _o(self, *a, **k))
    monkeypatch.setattr(type(get_backend("native")), "provides_complete_op", False)  # see the contract calls
    layer = bnlab.BatchNorm2d(16)
    x = torch.randn(64, 16, 16, 16)  # 2^18 values: the size from which auto uses cpu for training
    layer(x)
    layer(x.to(memory_format=torch.channels_last))
    assert ran == ["cpu", "native"]


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
    x = torch.randn(64, 16, 32, 32)  # 2^20 values: above the crossover
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
