"""bnlab.compat's conventions and float64 rules without the frameworks: torch's rule against torch itself, darknet's
against the port of darknet's layer, the momentum translations, the layout mapping, and bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnlab import compat
from bnlab.compat.modules import Ported
from bnlab.reference import darknet

F64 = torch.float64


@pytest.mark.parametrize(("convention", "framework_momentum", "torch_momentum"), [
    pytest.param(compat.KERAS, 0.99, 0.01, id="keras-default"),
    pytest.param(compat.FLAX, 0.9, 0.1, id="flax-0.9"),
    pytest.param(compat.TORCH, 0.1, 0.1, id="torch-same"),
])
def test_momentum_translates_both_ways(convention: compat.Convention, framework_momentum: float,
                                       torch_momentum: float) -> None:
    assert convention.to_torch_momentum(framework_momentum) == torch_momentum
    assert convention.from_torch_momentum(torch_momentum) == framework_momentum
    old, new = convention.update_weights(framework_momentum)
    assert (old, new) == pytest.approx((1 - torch_momentum, torch_momentum), abs=1e-15)


def test_darknet_hard_codes_its_update_as_float_literals() -> None:
    assert compat.DARKNET.update_weights() == (darknet.ROLLING_DECAY, darknet.ROLLING_WEIGHT)
    assert sum(compat.DARKNET.update_weights()) != 1.0  # .99f + .01f
    with pytest.raises(ValueError, match="hard-codes"):
        compat.DARKNET.update_weights(0.9)
    assert compat.DARKNET.eps == darknet.NORMALIZE_EPS and not compat.DARKNET.eps_inside_root


@pytest.mark.parametrize(("shape", "momentum"), [
    pytest.param((6, 3), 0.1, id="NC"),
    pytest.param((2, 4, 5, 3), 0.3, id="NCHW"),
    pytest.param((3, 2, 7), 1.0, id="NCL-momentum-1"),
])
def test_torch_rule_is_torchs_batch_norm(shape: tuple[int, ...], momentum: float) -> None:
    channels = shape[1]
    weight, bias = torch.randn(channels, dtype=F64), torch.randn(channels, dtype=F64)
    running_mean, running_var = torch.randn(channels, dtype=F64), torch.rand(channels, dtype=F64) + 0.5
    state = compat.BatchNormState(running_mean.clone(), running_var.clone(), weight, bias)
    for step in range(3):
        x = torch.randn(shape, dtype=F64) * 2 + step
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=momentum, eps=1e-5)
        rule = compat.train_step_reference(x, state, "torch", momentum=momentum)
        state = rule.state
        torch.testing.assert_close(rule.y, y, rtol=1e-12, atol=1e-12, msg=f"step {step}: output")
        torch.testing.assert_close(state.running_mean, running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.running_var, running_var, rtol=1e-12, atol=1e-12)  # unbiased stored
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(compat.infer_reference(x, state, "torch"),
                               F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=1e-5))
    assert state.num_batches_tracked == 3


def test_darknet_rule_is_the_darknet_layer() -> None:
    b, c, h, w = 4, 3, 2, 5
    layer = darknet.make_batchnorm_layer(b, w, h, c, dtype=F64)
    layer.scales, layer.biases = torch.randn(c, dtype=F64), torch.randn(c, dtype=F64)
    state = compat.initial_state(c, "darknet")._replace(weight=layer.scales, bias=layer.biases)
    assert state.running_var.tolist() == [0.0] * c  # darknet starts the rolling variance at 0
    for step in range(3):
        x = torch.randn(b, c, h, w, dtype=F64) + step
        y = darknet.forward_batchnorm_layer(layer, x.flatten(), train=True)
        rule = compat.train_step_reference(x, state, compat.DARKNET)
        state = rule.state
        torch.testing.assert_close(rule.y.flatten(), y, rtol=1e-12, atol=1e-12, msg=f"step {step}: output")
        torch.testing.assert_close(state.running_mean, layer.rolling_mean, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(state.running_var, layer.rolling_variance, rtol=1e-13, atol=1e-15)
    x = torch.randn(b, c, h, w, dtype=F64)
    torch.testing.assert_close(compat.infer_reference(x, state, "darknet").flatten(),
                               darknet.forward_batchnorm_layer(layer, x.flatten(), train=False), rtol=1e-12,
                               atol=1e-12)


def test_keras_and_flax_rules_differ_from_torchs_exactly_where_the_table_says() -> None:
    # Same input, same start: the outputs differ by ε only (Keras 1e-3, Flax and torch 1e-5); the stored
    # variances by Bessel's factor on the new batch's share.
    x = torch.randn(8, 4, dtype=F64) * 3
    start = compat.initial_state(4)
    torch_step = compat.train_step_reference(x, start, "torch", momentum=0.1)
    flax_step = compat.train_step_reference(x, start, "flax", momentum=0.9, channel_axis=1)
    keras_step = compat.train_step_reference(x, start, "keras", momentum=0.9, channel_axis=1)
    torch.testing.assert_close(flax_step.y, torch_step.y, rtol=1e-14, atol=1e-14)
    assert not torch.allclose(keras_step.y, torch_step.y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flax_step.state.running_mean, torch_step.state.running_mean, rtol=1e-14, atol=1e-15)
    biased = x.var(0, correction=0)
    torch.testing.assert_close(torch_step.state.running_var - flax_step.state.running_var,
                               0.1 * biased * (8 / 7 - 1), rtol=1e-12, atol=1e-14)


def test_layout_mapping_moves_channels_last_to_position_one() -> None:
    x = torch.randn(2, 3, 4, 5)  # N, H, W, C
    ported = Ported(torch.nn.Identity(), channels_last=True)
    inside = ported.module_input(x)
    assert inside.shape == (2, 5, 3, 4) and inside[1, 4, 2, 3] == x[1, 2, 3, 4]
    assert torch.equal(ported.framework_output(inside), x)
    assert Ported(torch.nn.Identity(), channels_last=False).module_input(x) is x


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown convention"):
        compat.get_convention("caffe")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        compat.KERAS.to_torch_momentum(1.5)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        compat.train_step_reference(torch.randn(1, 3), compat.initial_state(3), "torch")
    one_value = compat.train_step_reference(torch.randn(1, 3), compat.initial_state(3), "keras", channel_axis=1)
    assert torch.equal(one_value.y, torch.zeros(1, 3, dtype=F64))  # σ²_B = 0: Keras accepts it
    with pytest.raises(ValueError, match="out of range"):
        compat.infer_reference(torch.randn(2, 3), compat.initial_state(3), "torch", channel_axis=2)
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        compat.infer_reference(torch.randn(2, 3), compat.initial_state(4), "torch")
