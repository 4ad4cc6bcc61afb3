"""Ghost batch norm (bnlab.nn.GhostBatchNorm*d) against a float64 reference that loops over the ghost batches."""

from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.kernels import get_backend
from bnlab.nn import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from cases import make_input
from conftest import require
from tolerances import assert_close_to_torch
from variant_refs import assert_step_close, ghost, module_step, reference_step

GHOST = {2: GhostBatchNorm1d, 3: GhostBatchNorm1d, 4: GhostBatchNorm2d, 5: GhostBatchNorm3d}


def _layer(shape: tuple[int, ...], virtual: int, backend: str, **kwargs: object) -> torch.nn.Module:
    layer = GHOST[len(shape)](shape[1], virtual, backend=backend, **kwargs)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize(("shape", "layout", "virtual"), [
    pytest.param((8, 4, 5, 5), "contiguous", 4, id="2d-two-ghost-batches"),
    pytest.param((10, 4, 3, 3), "contiguous", 4, id="2d-last-smaller"),
    pytest.param((18, 6), "contiguous", 5, id="1d-NC-last-smaller"),
    pytest.param((6, 3, 7), "contiguous", 2, id="1d-NCL"),
    pytest.param((9, 8, 4, 4), "channels_last", 3, id="2d-channels_last"),
    pytest.param((5, 3, 3, 4, 5), "contiguous", 2, id="3d-last-single-sample"),
    pytest.param((3, 4, 5, 5), "contiguous", 8, id="batch-smaller-than-virtual"),
])
def test_training_matches_the_float64_reference(backend: str, shape: tuple[int, ...], layout: str,
                                                virtual: int) -> None:
    layer = _layer(shape, virtual, backend)
    for step in range(2):
        x = make_input(shape, layout) * (1 + step)
        grad_y = torch.randn(shape)
        ref = reference_step(ghost, x, grad_y, layer, virtual=virtual)
        ours = module_step(layer, x, grad_y)
        assert_step_close(ours, ref, what=f"step {step}")
        assert ours.y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert int(layer.num_batches_tracked) == 2  # one running update per call


def test_one_stats_call_serves_every_full_ghost_batch(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # No loop per ghost batch: 12 samples in ghost batches of 3 is one stats phase on a (3, 4·C, ...) view; a
    # smaller last ghost batch is a second one.
    impl = type(get_backend(backend.split(":")[0]))
    calls: list[tuple[int, ...]] = []
    original = impl.stats

    def spy(self, x, mask=None):  # type: ignore[no-untyped-def]
        calls.append(tuple(x.shape))
        return original(self, x, mask)

    monkeypatch.setattr(impl, "stats", spy)
    _layer((12, 2, 4, 4), 3, backend)(torch.randn(12, 2, 4, 4))
    assert calls == [(3, 8, 4, 4)]
    calls.clear()
    _layer((14, 2, 4, 4), 3, backend)(torch.randn(14, 2, 4, 4))
    assert calls == [(3, 8, 4, 4), (2, 2, 4, 4)]


def test_one_ghost_batch_is_batch_norm(backend: str) -> None:
    ours = _layer((6, 4, 3, 3), 6, backend)
    theirs = torch.nn.BatchNorm2d(4)
    theirs.load_state_dict(ours.state_dict())
    x, grad_y = torch.randn(6, 4, 3, 3) * 3 + 1, torch.randn(6, 4, 3, 3)
    o, t = module_step(ours, x, grad_y), module_step(theirs, x, grad_y)
    for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
        assert_close_to_torch(getattr(o, field), getattr(t, field), torch.float32, field)


def test_eval_is_batch_norm_eval(backend: str) -> None:
    ours = _layer((5, 4, 3, 3), 2, backend)
    ours(torch.randn(5, 4, 3, 3))
    theirs = torch.nn.BatchNorm2d(4).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 3, 3)
    assert_close_to_torch(ours.eval()(x), theirs(x), torch.float32, "eval")


def test_half_inputs_keep_float32_statistics(backend: str) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        require(backend, dtype)
        layer = _layer((10, 4, 5, 5), 4, backend)
        x, grad_y = make_input((10, 4, 5, 5), "channels_last", dtype), torch.randn(10, 4, 5, 5, dtype=dtype)
        ref = reference_step(ghost, x, grad_y, layer, virtual=4)
        ours = module_step(layer, x, grad_y)
        assert ours.y.dtype == dtype and layer.running_var.dtype == torch.float32
        assert_step_close(ours, ref, dtype, what=str(dtype))


def test_gradcheck_and_gradgradcheck_in_float64(backend: str) -> None:
    require(backend, torch.float64)
    layer = _layer((7, 3, 4), 3, backend).double()
    x = torch.randn(7, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradgradcheck(layer, (x,))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_compiled_fullgraph_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    eager, compiled_layer = _layer((10, 3, 4, 4), 4, backend), _layer((10, 3, 4, 4), 4, backend)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        x, grad_y = torch.randn(10, 3, 4, 4) * 2, torch.randn(10, 3, 4, 4)
        o, c = module_step(eager, x, grad_y), module_step(compiled, x, grad_y)
        for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
            torch.testing.assert_close(getattr(c, field), getattr(o, field), rtol=1e-5, atol=1e-5)


def test_keeps_batch_norms_state_dict_and_converts() -> None:
    plain = torch.nn.BatchNorm1d(4)
    plain.running_var.fill_(2.0)
    layer = GhostBatchNorm1d(4, 8)
    layer.load_state_dict(plain.state_dict())
    assert isinstance(layer, torch.nn.BatchNorm1d) and layer.state_dict().keys() == plain.state_dict().keys()
    back = bnlab.convert(torch.nn.Sequential(layer), to="torch")
    assert type(back[0]) is torch.nn.BatchNorm1d and not hasattr(back[0], "virtual_batch_size")
    there = bnlab.convert(torch.nn.Sequential(bnlab.BatchNorm1d(4, backend="reference")), to="ghost",
                          options={"virtual_batch_size": 16})
    assert type(there[0]) is GhostBatchNorm1d and there[0].virtual_batch_size == 16
    assert there[0].backend == "reference"  # a bnlab layer keeps its backend
    with pytest.raises(ValueError, match="needs options"):
        bnlab.convert(plain, to="ghost")
    with pytest.raises(ValueError, match="unknown"):
        bnlab.convert(plain, to="ghost", options={"virtual_batch_size": 4, "r_max": 2})
    with pytest.raises(ValueError, match="options apply to"):
        bnlab.convert(plain, to="torch", options={"virtual_batch_size": 4})


@pytest.mark.parametrize("value", [
    pytest.param(0, id="zero"), pytest.param(-2, id="negative"), pytest.param(2.5, id="float"),
    pytest.param(True, id="bool"),
])
def test_bad_virtual_batch_size_is_a_clear_error(value: object) -> None:
    with pytest.raises(ValueError, match="virtual_batch_size must be a positive int"):
        GhostBatchNorm2d(4, value)  # type: ignore[arg-type]


def test_a_single_value_ghost_batch_is_a_clear_error() -> None:
    layer = GhostBatchNorm1d(3, 4)
    before = layer.state_dict()
    with pytest.raises(ValueError, match="ghost batch of 1 sample"):
        layer(torch.randn(9, 3))  # 4 + 4 + 1
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())  # nothing changed


def test_a_mask_is_refused() -> None:
    with pytest.raises(TypeError, match="takes no mask"):
        GhostBatchNorm1d(3, 2)(torch.randn(4, 3, 5), torch.ones(4, 5, dtype=torch.bool))
