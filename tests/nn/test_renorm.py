"""Batch Renormalization (bnlab.nn.BatchRenorm*d) against a float64 reference of Ioffe's Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

import bnlab
from bnlab.nn import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, renorm_schedule
from cases import make_input
from conftest import require
from tolerances import assert_close_to_torch
from variant_refs import INF, assert_step_close, module_step, reference_step, renorm

RENORM = {2: BatchRenorm1d, 3: BatchRenorm1d, 4: BatchRenorm2d, 5: BatchRenorm3d}


def _layer(shape: tuple[int, ...], backend: str, **kwargs: object) -> torch.nn.Module:
    layer = RENORM[len(shape)](shape[1], backend=backend, **kwargs)
    with torch.no_grad():  # running statistics away from the batch's, so that r and d clip
        layer.running_mean.uniform_(-1.0, 1.0)
        layer.running_var.uniform_(0.05, 4.0)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize(("shape", "layout", "kwargs"), [
    pytest.param((8, 4, 5, 5), "contiguous", {}, id="2d-defaults"),
    pytest.param((16, 6), "contiguous", {"r_max": 1.5, "d_max": 0.5}, id="1d-tight-bounds"),
    pytest.param((4, 3, 7), "contiguous", {"momentum": 0.3}, id="1d-NCL"),
    pytest.param((4, 8, 6, 6), "channels_last", {"r_max": 2.0, "d_max": 1.0}, id="2d-channels_last"),
    pytest.param((2, 3, 3, 4, 5), "contiguous", {}, id="3d"),
])
def test_training_matches_the_float64_reference(backend: str, shape: tuple[int, ...], layout: str,
                                                kwargs: dict) -> None:
    layer = _layer(shape, backend, **kwargs)
    for step in range(3):  # r and d read the running statistics the previous steps moved
        x = make_input(shape, layout) * (1 + step)
        grad_y = torch.randn(shape)
        ref = reference_step(renorm, x, grad_y, layer, r_max=layer.r_max, d_max=layer.d_max)
        ours = module_step(layer, x, grad_y)
        assert_step_close(ours, ref, what=f"step {step}")
        assert ours.y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert int(layer.num_batches_tracked) == 3


def test_r_max_1_and_d_max_0_is_batch_norm(backend: str) -> None:
    ours = _layer((6, 4, 3, 3), backend, r_max=1.0, d_max=0.0, momentum=0.1)
    theirs = torch.nn.BatchNorm2d(4)
    theirs.load_state_dict(ours.state_dict())
    for _ in range(2):
        x, grad_y = torch.randn(6, 4, 3, 3) * 3 + 1, torch.randn(6, 4, 3, 3)
        o, t = module_step(ours, x, grad_y), module_step(theirs, x, grad_y)
        for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
            assert_close_to_torch(getattr(o, field), getattr(t, field), torch.float32, field)


def test_unbounded_training_output_is_the_eval_transform(backend: str) -> None:
    layer = _layer((8, 3, 4, 4), backend, r_max=math.inf, d_max=math.inf)
    x = torch.randn(8, 3, 4, 4) * 2 + 0.5
    expected = layer.eval()(x)  # γ(x − μ)/√(σ² + ε) + β with the running statistics before the step
    y = layer.train()(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_eval_is_batch_norm_eval(backend: str) -> None:
    ours = _layer((5, 4, 3, 3), backend).eval()
    theirs = torch.nn.BatchNorm2d(4).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 3, 3)
    assert_close_to_torch(ours(x), theirs(x), torch.float32, "eval")


def test_the_papers_schedule() -> None:
    r_max, d_max = renorm_schedule()
    # r_max: 1 until step 5000, then linearly to 3 at 40000; d_max: 0 until 5000, then to 5 at 25000.
    steps = torch.tensor([0, 5000, 15000, 22500, 25000, 40000, 90000])
    assert [float(r_max(s)) for s in steps] == pytest.approx([1.0, 1.0, 1 + 2 / 3.5, 2.0, 1 + 4 / 3.5, 3.0, 3.0])
    assert [float(d_max(s)) for s in steps] == pytest.approx([0.0, 0.0, 2.5, 4.375, 5.0, 5.0, 5.0])


def test_a_schedule_reads_the_layers_step_count() -> None:
    # A schedule at its start (r_max 1, d_max 0) is batch norm; after its ramp, the reference with (3, 5).
    r_max, d_max = renorm_schedule(warmup=2, r_max_reach=4, d_max_reach=4)
    layer = _layer((6, 3, 4), "reference", r_max=r_max, d_max=d_max)
    for step, bounds in enumerate([(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (2.0, 2.5), (3.0, 5.0), (3.0, 5.0)]):
        x, grad_y = torch.randn(6, 3, 4) * 2 - 1, torch.randn(6, 3, 4)
        ref = reference_step(renorm, x, grad_y, layer, r_max=bounds[0], d_max=bounds[1])
        assert_step_close(module_step(layer, x, grad_y), ref, what=f"step {step}")


def test_half_inputs_keep_float32_statistics(backend: str) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        require(backend, dtype)
        layer = _layer((8, 4, 5, 5), backend)
        before = (layer.running_mean.clone(), layer.running_var.clone())
        x, grad_y = make_input((8, 4, 5, 5), "channels_last", dtype), torch.randn(8, 4, 5, 5, dtype=dtype)
        ref_layer = _layer((8, 4, 5, 5), backend)
        ref_layer.load_state_dict(layer.state_dict())
        ref = reference_step(renorm, x, grad_y, ref_layer, r_max=3.0, d_max=5.0)
        ours = module_step(layer, x, grad_y)
        assert ours.y.dtype == dtype and layer.running_mean.dtype == torch.float32
        assert not torch.equal(layer.running_mean, before[0])
        assert_step_close(ours, ref, dtype, what=str(dtype))


def test_gradcheck_and_gradgradcheck_in_float64(backend: str) -> None:
    require(backend, torch.float64)
    # r and d are constants of the backward (stop-gradient) but not of the forward, so finite differences see
    # them move unless they are clipped: running statistics far from the batch's clip r at 1/r_max and d at
    # −d_max in every channel, and the check then covers r ≠ 1, d ≠ 0.
    layer = _layer((4, 3, 5), backend, r_max=2.0, d_max=1.0).double()
    with torch.no_grad():
        layer.running_mean.fill_(50.0)
        layer.running_var.fill_(100.0)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    buffers = [b.clone() for b in layer.buffers()]

    def f(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the same running statistics, hence the same r and d, at every evaluation
            for b, saved in zip(layer.buffers(), buffers, strict=True):
                b.copy_(saved)
        return layer(x)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_compiled_fullgraph_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    eager, compiled_layer = _layer((6, 3, 4, 4), backend), _layer((6, 3, 4, 4), backend)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        x, grad_y = torch.randn(6, 3, 4, 4) * 2, torch.randn(6, 3, 4, 4)
        o, c = module_step(eager, x, grad_y), module_step(compiled, x, grad_y)
        for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
            torch.testing.assert_close(getattr(c, field), getattr(o, field), rtol=1e-5, atol=1e-5)


def test_keeps_batch_norms_state_dict_and_converts() -> None:
    plain = torch.nn.BatchNorm2d(4)
    plain.running_mean.fill_(0.5)
    layer = BatchRenorm2d(4)
    layer.load_state_dict(plain.state_dict())  # a plain checkpoint loads
    assert isinstance(layer, torch.nn.BatchNorm2d) and layer.state_dict().keys() == plain.state_dict().keys()
    back = bnlab.convert(torch.nn.Sequential(layer), to="torch")
    assert type(back[0]) is torch.nn.BatchNorm2d and not hasattr(back[0], "r_max")
    torch.testing.assert_close(back[0].running_mean, plain.running_mean)
    there = bnlab.convert(torch.nn.Sequential(plain), to="renorm", options={"r_max": 2.0, "d_max": 1.0})
    assert type(there[0]) is BatchRenorm2d and (there[0].r_max, there[0].d_max) == (2.0, 1.0)
    assert there[0].momentum == plain.momentum  # the checkpoint's hyper-parameters are kept
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(there.eval()(x), plain.eval()(x))


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"r_max": 0.5}, "r_max must be a number >= 1", id="r_max-below-1"),
    pytest.param({"d_max": -1.0}, "d_max must be a number >= 0", id="d_max-negative"),
    pytest.param({"r_max": "3"}, "r_max must be", id="r_max-string"),
    pytest.param({"d_max": float("nan")}, "d_max must be", id="d_max-nan"),
    pytest.param({"track_running_stats": False}, "needs track_running_stats=True", id="no-running-stats"),
])
def test_bad_arguments_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchRenorm2d(4, **kwargs)


def test_repr_shows_the_bounds() -> None:
    assert "r_max=3.0, d_max=inf" in repr(BatchRenorm1d(3, d_max=INF))
