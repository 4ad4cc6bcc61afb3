"""bnlab.nn.BatchNorm1d/2d/3d as drop-in replacements: PyTorch's modules are the oracle."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import bnlab
from cases import make_input, module_class
from tolerances import assert_close_to_torch

# (shape, layout, constructor keywords): each case one situation users rely on.
MODULE_CASES = [
    pytest.param((8, 4, 5, 5), "contiguous", {}, id="2d-defaults"),
    pytest.param((16, 6), "contiguous", {"momentum": None}, id="1d-NC-cumulative"),
    pytest.param((4, 3, 7), "contiguous", {"momentum": 0.0}, id="1d-NCL-momentum0"),
    pytest.param((4, 8, 6, 6), "channels_last", {"momentum": 1.0}, id="2d-channels_last-momentum1"),
    pytest.param((2, 3, 3, 4, 5), "contiguous", {"affine": False}, id="3d-no-affine"),
    pytest.param((6, 5, 4, 4), "contiguous", {"track_running_stats": False}, id="2d-no-running-stats"),
    pytest.param((3, 5, 6, 7), "strided", {"eps": 1e-3}, id="2d-non-contiguous-eps"),
    pytest.param((2, 4, 3, 4, 5), "channels_last", {"momentum": None}, id="3d-channels_last-cumulative"),
    pytest.param((5, 4, 3, 3), "contiguous", {"bias": False}, id="2d-weight-without-bias"),
]


def _pair(shape: tuple[int, ...], kwargs: dict, backend: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    theirs = module_class(len(shape), "torch")(shape[1], **kwargs)
    ours = module_class(len(shape), "bnlab")(shape[1], backend=backend, **kwargs)
    with torch.no_grad():
        if theirs.weight is not None:
            theirs.weight.uniform_(0.5, 1.5)
        if theirs.bias is not None:
            theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _step(module: torch.nn.Module, x: torch.Tensor, grad_y: torch.Tensor):  # type: ignore[no-untyped-def]
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    y = module(x)
    y.backward(grad_y)
    grads = [p.grad for p in module.parameters()]
    return y.detach(), x.grad, grads


@pytest.mark.parametrize(("shape", "layout", "kwargs"), MODULE_CASES)
def test_training_then_eval_matches_torch(backend: str, shape: tuple[int, ...], layout: str, kwargs: dict) -> None:
    ours, theirs = _pair(shape, kwargs, backend)
    for step in range(3):  # several steps so the running averages and the batch counter move
        x = make_input(shape, layout) * (1 + step)
        grad_y = torch.randn(shape)
        o, t = _step(ours, x, grad_y), _step(theirs, x, grad_y)
        assert_close_to_torch(o[0], t[0], torch.float32, f"step {step} output")
        assert_close_to_torch(o[1], t[1], torch.float32, f"step {step} input grad")
        for go, gt in zip(o[2], t[2], strict=True):
            assert_close_to_torch(go, gt, torch.float32, f"step {step} parameter grad")
        if layout == "channels_last":
            fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
            assert o[0].is_contiguous(memory_format=fmt) and o[1].is_contiguous(memory_format=fmt)
    for key, value in theirs.state_dict().items():
        assert_close_to_torch(ours.state_dict()[key].double(), value.double(), torch.float32, key)
    ours.eval()
    theirs.eval()
    x = make_input(shape, layout)
    grad_y = torch.randn(shape)
    o, t = _step(ours, x, grad_y), _step(theirs, x, grad_y)
    assert_close_to_torch(o[0], t[0], torch.float32, "eval output")
    assert_close_to_torch(o[1], t[1], torch.float32, "eval input grad")


@pytest.mark.parametrize("dim", [pytest.param(4, id="2d"), pytest.param(5, id="3d")])
def test_channels_last_is_preserved(backend: str, dim: int) -> None:
    shape = (2, 3, 4, 5) if dim == 4 else (2, 3, 2, 4, 5)
    fmt = torch.channels_last if dim == 4 else torch.channels_last_3d
    module = module_class(dim)(3, backend=backend)
    x = make_input(shape, "channels_last").requires_grad_()
    y = module(x)
    y.backward(torch.randn(shape))
    assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    module.eval()
    assert module(x).is_contiguous(memory_format=fmt)


def test_is_a_torch_module_with_torchs_defaults_and_keys() -> None:
    for ours, theirs in ((bnlab.BatchNorm1d, torch.nn.BatchNorm1d), (bnlab.BatchNorm2d, torch.nn.BatchNorm2d),
                         (bnlab.BatchNorm3d, torch.nn.BatchNorm3d)):
        a, b = ours(7), theirs(7)
        assert isinstance(a, theirs) and isinstance(a, torch.nn.modules.batchnorm._BatchNorm)
        assert list(a.state_dict()) == list(b.state_dict())
        assert (a.eps, a.momentum, a.affine, a.track_running_stats) == (b.eps, b.momentum, b.affine,
                                                                        b.track_running_stats)
        assert a.backend == "auto" and "backend='auto'" in repr(a)
    assert bnlab.nn.BatchNorm2d is bnlab.BatchNorm2d


def test_state_dict_round_trip_through_torch_is_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BNLAB_BACKEND", raising=False)  # "auto" on CPU is ATen's kernel: bit-identical to torch
    ours = bnlab.BatchNorm2d(4)
    ours.train()
    for _ in range(3):
        ours(torch.randn(8, 4, 5, 5) * 3 + 1)
    ours.eval()
    x = torch.randn(2, 4, 5, 5)
    theirs = torch.nn.BatchNorm2d(4).eval()
    theirs.load_state_dict(ours.state_dict())
    back = bnlab.BatchNorm2d(4).eval()
    back.load_state_dict(theirs.state_dict())
    assert torch.equal(ours(x), theirs(x)), "bnlab (auto backend) and torch give bit-identical eval outputs"
    assert torch.equal(back(x), ours(x))
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_old_checkpoint_without_batch_counter_loads_as_in_torch() -> None:
    source = torch.nn.BatchNorm2d(3)
    state = source.state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]  # saved before the counter existed
    for cls in (bnlab.BatchNorm2d, torch.nn.BatchNorm2d):
        module = cls(3)
        module.num_batches_tracked.fill_(5)
        module.load_state_dict(state)
        assert int(module.num_batches_tracked) == 5  # torch keeps the module's own counter, and so do we
        fresh = cls(3)
        fresh.load_state_dict(state)
        assert int(fresh.num_batches_tracked) == 0
        assert torch.equal(fresh.running_var, source.running_var)


def test_deepcopy_pickle_and_save(tmp_path: object) -> None:
    module = bnlab.BatchNorm1d(5, momentum=None, backend="reference")
    module(torch.randn(4, 5))
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(clone) is bnlab.BatchNorm1d and clone.backend == "reference"
        assert torch.equal(clone.running_mean, module.running_mean)
        assert int(clone.num_batches_tracked) == 1
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.backend == "reference" and torch.equal(loaded.running_var, module.running_var)


def test_to_dtype_and_half_module() -> None:
    module = bnlab.BatchNorm2d(3).to(torch.float64)
    assert module.weight.dtype == module.running_mean.dtype == torch.float64
    assert module(torch.randn(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64
    half = bnlab.BatchNorm2d(3).half()
    y = half(torch.randn(2, 3, 4, 4).half())
    assert y.dtype == torch.float16 and half.running_mean.dtype == torch.float16
    assert bnlab.BatchNorm2d(3, device="meta").weight.device.type == "meta"


def test_num_batches_tracked_counts_training_batches_only(backend: str) -> None:
    module = bnlab.BatchNorm1d(3, backend=backend)
    for _ in range(4):
        module(torch.randn(5, 3))
    module.eval()
    module(torch.randn(5, 3))
    assert int(module.num_batches_tracked) == 4
    module.train()
    module(torch.randn(0, 3))  # an empty batch is counted, as torch counts it
    assert int(module.num_batches_tracked) == 5


def test_eval_without_running_statistics_uses_batch_statistics(backend: str) -> None:
    ours = bnlab.BatchNorm2d(3, track_running_stats=False, backend=backend).eval()
    theirs = torch.nn.BatchNorm2d(3, track_running_stats=False).eval()
    x = torch.randn(4, 3, 5, 5)
    assert ours.running_mean is None
    torch.testing.assert_close(ours(x), theirs(x))


def test_switching_tracking_off_after_construction_matches_torch(backend: str) -> None:
    ours, theirs = bnlab.BatchNorm1d(3, backend=backend), torch.nn.BatchNorm1d(3)
    for m in (ours, theirs):
        m.track_running_stats = False  # buffers stay, but training no longer updates them
    x = torch.randn(6, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    assert torch.equal(ours.running_mean, theirs.running_mean) and int(ours.num_batches_tracked) == 0
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))  # eval still uses the (untouched) running buffers
