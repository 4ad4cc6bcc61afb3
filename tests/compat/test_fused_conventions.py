"""``convention=`` on the fused ``BatchNormAct`` layers: act(BN(x) + r) with the batch norm under Keras's, Flax's
or darknet's rules, against compat's float64 rules (a Keras model's BN followed by ReLU is the common port)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bnlab
from bnlab import compat
from bnlab.reference.fused import activate
from cases import make_input
from conftest import require
from tolerances import ATOL, KERNEL_FLOOR, RTOL

# The float64 yardsticks at momentum 0.01 (torch's meaning); darknet's with decimal weights (its .99f/.01f are
# float32 literals, which a float32 module rounds 0.99 and 0.01 to anyway).
RULES = {
    "keras": (compat.KERAS, {"momentum": compat.KERAS.from_torch_momentum(0.01)}),
    "flax": (compat.FLAX, {"momentum": compat.FLAX.from_torch_momentum(0.01)}),
    "darknet": (dataclasses.replace(compat.DARKNET, momentum=0.99, fixed_update=(0.99, 0.01)), {}),
}
ACT_LAYERS = {2: bnlab.nn.BatchNormAct1d, 4: bnlab.nn.BatchNormAct2d, 5: bnlab.nn.BatchNormAct3d}


def fused(convention: str, channels: int, rank: int, backend: str, **options: object) -> torch.nn.Module:
    conv = RULES[convention][0]
    layer = ACT_LAYERS[rank](channels, eps=conv.eps, momentum=0.01, backend=backend, convention=convention,
                             **options)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize("convention", ["keras", "flax", "darknet"])
@pytest.mark.parametrize(("shape", "layout", "activation", "residual"), [
    pytest.param((6, 4, 3, 3), "contiguous", "relu", False, id="2d-relu"),
    pytest.param((8, 5), "contiguous", "leaky_relu", True, id="1d-leaky_relu-residual"),
    pytest.param((4, 6, 4, 4), "channels_last", "silu", True, id="2d-channels_last-silu-residual"),
    pytest.param((2, 3, 2, 3, 4), "contiguous", "elu", False, id="3d-elu"),
])
def test_fused_layers_follow_the_conventions_float64_rule(backend: str, convention: str, shape: tuple[int, ...],
                                                          layout: str, activation: str, residual: bool) -> None:
    conv, options = RULES[convention]
    layer = fused(convention, shape[1], len(shape), backend, activation=activation)
    state = compat.BatchNormState(layer.running_mean.double(), layer.running_var.double(),
                                  layer.weight.detach().double(), layer.bias.detach().double())
    tol = KERNEL_FLOOR[torch.float32]
    for step in range(3):
        x = make_input(shape, layout) * (1 + step)
        r = make_input(shape, layout) if residual else None
        rule = compat.train_step_reference(x, state, conv, channel_axis=1, **options)  # type: ignore[arg-type]
        state = rule.state
        expected = activate(rule.y + (0 if r is None else r.double()), activation, layer.negative_slope)
        y = layer(x, r)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=tol * max(1.0, expected.abs().max().item()))
        torch.testing.assert_close(layer.running_var.double(), state.running_var, rtol=RTOL[torch.float32],
                                   atol=ATOL[torch.float32])
        torch.testing.assert_close(layer.running_mean.double(), state.running_mean, rtol=RTOL[torch.float32],
                                   atol=ATOL[torch.float32])
    x = make_input(shape, layout)
    r = make_input(shape, layout) if residual else None
    expected = activate(compat.infer_reference(x, state, conv, channel_axis=1) + (0 if r is None else r.double()),
                        activation, layer.negative_slope)
    y = layer.eval()(x, r)
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=tol * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("convention", ["keras", "darknet"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_gradcheck_float64(convention: str, mode: str) -> None:
    require("reference", torch.float64)
    layer = fused(convention, 3, 4, "reference", activation="silu").double().train(mode == "train")
    x = make_input((3, 3, 2, 2), "contiguous", torch.float64).requires_grad_()
    r = make_input((3, 3, 2, 2), "contiguous", torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, r))


def test_keras_fused_layer_allows_one_value_per_channel(backend: str) -> None:
    layer = fused("keras", 3, 2, backend, activation="relu")
    r = torch.tensor([[1.0, -5.0, 0.25]])
    y = layer(torch.randn(1, 3), r)  # x̂ = 0: y = relu(β + r)
    torch.testing.assert_close(y, torch.relu(layer.bias.detach() + r), rtol=0, atol=1e-4)
