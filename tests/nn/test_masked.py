"""Masked batch norm (BatchNorm1d.forward(x, mask), bnlab.functional.batch_norm(..., mask=)) against a float64
reference that selects the valid positions."""

from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.functional import batch_norm
from cases import make_input
from conftest import require
from variant_refs import assert_step_close, masked, module_step, reference_step


def _mask(n: int, length: int, valid: list[int]) -> torch.Tensor:
    """Padded sequences: sample i has its first valid[i] positions valid."""
    return torch.arange(length).expand(n, length) < torch.tensor(valid).unsqueeze(1)


def _layer(channels: int, backend: str, **kwargs: object) -> bnlab.BatchNorm1d:
    layer = bnlab.BatchNorm1d(channels, backend=backend, **kwargs)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize(("shape", "valid", "kwargs"), [
    pytest.param((4, 3, 7), [7, 5, 2, 1], {}, id="padded-sequences"),
    pytest.param((3, 5, 9), [9, 9, 9], {"momentum": None}, id="all-valid-cumulative"),
    pytest.param((5, 2, 6), [0, 6, 3, 0, 1], {"momentum": 0.5}, id="empty-samples"),
])
def test_training_matches_the_float64_reference(backend: str, shape: tuple[int, ...], valid: list[int],
                                                kwargs: dict) -> None:
    layer = _layer(shape[1], backend, **kwargs)
    mask = _mask(shape[0], shape[2], valid)
    for step in range(2):
        x = make_input(shape, "contiguous") * (1 + step)
        x[~mask.unsqueeze(1).expand_as(x)] = 1e3  # padding far from the data: it must not reach the statistics
        grad_y = torch.randn(shape)
        momentum = layer.momentum if layer.momentum is not None else 1.0 / (step + 1)
        ref = reference_step(masked, x, grad_y, layer, momentum, mask=mask)
        ours = module_step(layer, x, grad_y, mask)
        assert_step_close(ours, ref, what=f"step {step}")


def test_padded_positions_get_the_exact_gradient() -> None:
    # A padded input moves only its own output (γ/σ_B·dy); a valid one also moves every output, padded ones
    # included, through the statistics. Autograd in float64 through the selection is the yardstick.
    layer = _layer(2, "reference").double()
    mask = _mask(3, 4, [4, 2, 1])
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,))
    assert torch.autograd.gradgradcheck(lambda t: layer(t, mask), (x,))


def test_gradcheck_on_every_backend(backend: str) -> None:
    require(backend, torch.float64)
    layer = _layer(3, backend).double()
    mask = _mask(3, 5, [5, 3, 2])
    x = torch.randn(3, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,))


def test_functional_form_and_eval(backend: str) -> None:
    mask = _mask(4, 6, [6, 4, 3, 1])
    x = torch.randn(4, 3, 6)
    rm, rv = torch.zeros(3), torch.ones(3)
    layer = _layer(3, backend)
    y = batch_norm(x, rm, rv, layer.weight, layer.bias, True, 0.1, 1e-5, backend=backend, mask=mask)
    torch.testing.assert_close(y, layer(x, mask))
    torch.testing.assert_close((rm, rv), (layer.running_mean, layer.running_var))
    layer.eval()  # in eval the mask changes nothing: running statistics normalize every position
    torch.testing.assert_close(layer(x, mask), layer(x))


def test_half_inputs_keep_float32_statistics(backend: str) -> None:
    mask = _mask(4, 8, [8, 6, 3, 2])
    for dtype in (torch.float16, torch.bfloat16):
        require(backend, dtype)
        layer = _layer(3, backend)
        x, grad_y = make_input((4, 3, 8), "contiguous", dtype), torch.randn(4, 3, 8, dtype=dtype)
        ref = reference_step(masked, x, grad_y, layer, mask=mask)
        ours = module_step(layer, x, grad_y, mask)
        assert ours.y.dtype == dtype and layer.running_mean.dtype == torch.float32
        assert_step_close(ours, ref, dtype, what=str(dtype))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_compiled_fullgraph_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    eager, compiled_layer = _layer(3, backend), _layer(3, backend)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    mask = _mask(4, 6, [6, 5, 2, 1])
    x, grad_y = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    o, c = module_step(eager, x, grad_y, mask), module_step(compiled, x, grad_y, mask)
    for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(c, field), getattr(o, field), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("x_shape", "mask", "error", "message"), [
    pytest.param((2, 3, 4), torch.ones(2, 4), ValueError, "boolean tensor of shape", id="float-mask"),
    pytest.param((2, 3, 4), torch.ones(2, 5, dtype=torch.bool), ValueError, r"\(N, L\) = \(2, 4\)",
                 id="wrong-length"),
    pytest.param((2, 3, 4), torch.ones(2, 3, 4, dtype=torch.bool), ValueError, "boolean tensor of shape",
                 id="mask-with-channels"),
    pytest.param((2, 3), torch.ones(2, dtype=torch.bool), ValueError, r"needs an \(N, C, L\) input", id="NC-input"),
    pytest.param((2, 3, 4), [[True] * 4] * 2, TypeError, "must be a boolean tensor", id="list-mask"),
    pytest.param((2, 3, 4), torch.tensor([[True, False, False, False], [False] * 4]), ValueError,
                 "leaves 1 valid value", id="one-valid-position"),
])
def test_bad_masks_are_clear_errors(x_shape: tuple[int, ...], mask: object, error: type, message: str) -> None:
    layer = bnlab.BatchNorm1d(3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(error, match=message):
        layer(torch.randn(*x_shape), mask)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        batch_norm(torch.randn(*x_shape), torch.zeros(3), torch.ones(3), training=True, mask=mask)  # type: ignore[arg-type]
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())  # nothing changed
