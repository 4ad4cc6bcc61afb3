"""``convention=`` on bnlab modules against bnlab.compat's float64 rules (docs/compat.md's spec table)."""

from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab import compat
from cases import make_input
from conftest import require


@pytest.mark.parametrize("convention", ["keras", "flax"])
@pytest.mark.parametrize(("shape", "layout"), [
    pytest.param((6, 4, 3, 3), "contiguous", id="2d"),
    pytest.param((8, 5), "contiguous", id="1d-NC"),
    pytest.param((4, 8, 5, 5), "channels_last", id="2d-channels_last"),
])
def test_training_steps_follow_the_conventions_float64_rule(backend: str, convention: str, shape: tuple[int, ...],
                                                            layout: str) -> None:
    conv = compat.get_convention(convention)
    layer = {2: bnlab.BatchNorm1d, 4: bnlab.BatchNorm2d}[len(shape)](shape[1], eps=conv.eps, momentum=0.01,
                                                                     backend=backend, convention=convention)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    state = compat.BatchNormState(layer.running_mean.double(), layer.running_var.double(),
                                  layer.weight.detach().double(), layer.bias.detach().double())
    for step in range(3):
        x = make_input(shape, layout) * (1 + step)
        rule = compat.train_step_reference(x.double(), state, conv, momentum=conv.from_torch_momentum(0.01),
                                           channel_axis=1)
        state = rule.state
        y = layer(x)
        torch.testing.assert_close(y.double(), rule.y, rtol=1e-5, atol=2e-5, msg=f"step {step} output")
        torch.testing.assert_close(layer.running_var.double(), state.running_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_mean.double(), state.running_mean, rtol=1e-5, atol=1e-6)
    x = make_input(shape, layout)
    torch.testing.assert_close(layer.eval()(x).double(), compat.infer_reference(x.double(), state, conv,
                                                                                channel_axis=1),
                               rtol=1e-5, atol=2e-5)


def test_keras_allows_one_value_per_channel(backend: str) -> None:
    # Keras and Flax: σ²_B = 0, y = β, and the running variance moves towards 0 (torch raises).
    layer = bnlab.BatchNorm1d(3, momentum=0.5, backend=backend, convention="keras")
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    y = layer(torch.randn(1, 3))
    # x − μ_B is 0 up to the rounding of μ_B, which 1/√ε ≈ 316 amplifies: a few float32 ulps times 316.
    torch.testing.assert_close(y, layer.bias.detach().unsqueeze(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(layer.running_var, torch.full((3,), 0.5))


def test_gradients_are_batch_norms() -> None:
    require("reference", torch.float64)
    ours = bnlab.BatchNorm2d(3, convention="flax", backend="reference").double()
    theirs = torch.nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ours, (x,))
    gy = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours(x), x, gy)
    (g_theirs,) = torch.autograd.grad(theirs(x), x, gy)
    torch.testing.assert_close(g_ours, g_theirs)


def test_compiled_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()
    eager = bnlab.BatchNorm2d(3, convention="keras", backend="reference")
    compiled_layer = bnlab.BatchNorm2d(3, convention="keras", backend="reference")
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(compiled(x), eager(x))
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)


@pytest.mark.parametrize(("make", "error", "message"), [
    pytest.param(lambda: bnlab.BatchNorm2d(3, convention="caffe"), ValueError, "convention must be one of",
                 id="unknown"),
    pytest.param(lambda: bnlab.nn.BatchRenorm2d(3, convention="keras"), ValueError, "batch renorm is Ioffe's rule",
                 id="renorm"),
    pytest.param(lambda: bnlab.nn.GhostBatchNorm2d(3, 2, momentum=0.01, convention="darknet"), ValueError,
                 "no ghost batch norm", id="ghost"),
    pytest.param(lambda: bnlab.nn.BatchNormAct2d(3, convention="darknet"), ValueError, "pass momentum=0.01",
                 id="fused-darknet-momentum"),
])
def test_bad_conventions_are_clear_errors(make: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("layer", [
    pytest.param(lambda: bnlab.nn.BatchRenorm2d(3), id="renorm"),
    pytest.param(lambda: bnlab.nn.GhostBatchNorm2d(3, 2), id="ghost"),
])
def test_a_convention_assigned_to_a_variant_layer_is_refused_at_the_call(layer: object) -> None:
    module = layer()  # type: ignore[operator]
    module.convention = "keras"
    with pytest.raises(ValueError, match="use convention='torch'"):
        module(torch.randn(4, 3, 2, 2))
    assert int(module.num_batches_tracked) == 0


def test_a_mask_with_a_convention_is_refused() -> None:
    layer = bnlab.BatchNorm1d(3, convention="keras")
    with pytest.raises(ValueError, match="mask with convention='keras'"):
        layer(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
