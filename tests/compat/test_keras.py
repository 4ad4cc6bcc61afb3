"""bnlab.compat against Keras 3 itself (PyTorch backend): a layer converted to bnlab and back gives Keras's outputs
and statistics within 1e-6 in float32 where a bnlab module can represent them (inference; training outputs and
the moving mean), and compat's float64 Keras rules give Keras's numbers everywhere, moving variance included."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from bnlab import compat
from bnlab import nn as bnlab_nn
from bnlab.compat.steps import BatchNormState
from compat.frameworks import FLOAT32_TOL, FLOAT64_TOL, assert_within, batches, max_difference, run_module

# Keras 3.15's own variables call np.array(..., copy=False) on numpy 2: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# (input shape, axis): Keras's default is channels-last.
LAYOUTS = [
    pytest.param((6, 5, 4, 3), -1, id="NHWC"),
    pytest.param((8, 5), -1, id="NC"),  # a dense layer's output: m = N = 8
    pytest.param((4, 7, 6), -1, id="NLC"),
    pytest.param((2, 3, 4, 4, 5), -1, id="NDHWC"),
    pytest.param((3, 4, 5, 5), 1, id="NCHW-axis1"),  # data_format="channels_first": no permutation
]


def weights_by_name(layer: Any) -> dict[str, np.ndarray]:
    return {v.name: np.asarray(w) for v, w in zip(layer.weights, layer.get_weights(), strict=True)}


def make_layer(keras: ModuleType, shape: tuple[int, ...], axis: int, *, dtype: str = "float32", seed: int = 1,
               **options: Any) -> Any:
    """A built Keras layer with random γ, β and moving statistics (not Keras's 1, 0, 0, 1)."""
    options = {"momentum": 0.9, "epsilon": 1e-3, **options}
    layer = keras.layers.BatchNormalization(axis=axis, dtype=dtype, **options)
    layer.build((None, *shape[1:]))
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    values = {"gamma": 1 + 0.5 * rng.standard_normal(channels), "beta": rng.standard_normal(channels),
              "moving_mean": rng.standard_normal(channels), "moving_variance": 0.5 + rng.random(channels)}
    current = layer.get_weights()  # renorm's extra weights keep theirs
    layer.set_weights([values.get(v.name, w).astype(dtype) for v, w in zip(layer.weights, current, strict=True)])
    return layer


def keras_state(layer: Any) -> BatchNormState:
    w = {k: torch.from_numpy(v) for k, v in weights_by_name(layer).items()}
    return BatchNormState(w["moving_mean"], w["moving_variance"], w.get("gamma"), w.get("beta"))


def keras_call(layer: Any, x: torch.Tensor, training: bool) -> torch.Tensor:
    return layer(x, training=training).detach()


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_from_keras_with_the_torch_convention_infers_and_trains_as_keras_but_for_the_variance(
        keras: ModuleType, shape: tuple[int, ...], axis: int) -> None:
    layer = make_layer(keras, shape, axis)
    ported = compat.from_keras(layer, convention="torch")
    assert ported.module.convention == "torch" and any("convention='torch'" in n for n in ported.notes)
    assert ported.channels_last == (axis == -1 and len(shape) > 2)
    keras_rule = keras_state(layer)  # compat's float64 Keras rule, from the same start
    bnlab_rule = keras_rule  # the same rule storing the unbiased variance: what the bnlab module does
    unbiased_keras = dataclasses.replace(compat.KERAS, variance_stored="unbiased")
    xs = batches(shape, axis)
    assert_within(run_module(ported, xs[0], train=False), keras_call(layer, xs[0], False), FLOAT32_TOL, "inference")
    for step, x in enumerate(xs):
        ours, theirs = run_module(ported, x, train=True), keras_call(layer, x, True)
        assert_within(ours, theirs, FLOAT32_TOL, f"step {step}: training output")
        keras_now = weights_by_name(layer)
        assert_within(ported.module.running_mean, keras_now["moving_mean"], FLOAT32_TOL, f"step {step}: mean")
        step_ = compat.train_step_reference(x, keras_rule, compat.KERAS, momentum=0.9, channel_axis=axis)
        keras_rule = step_.state
        bnlab_rule = compat.train_step_reference(x, bnlab_rule, unbiased_keras, momentum=0.9,
                                                 channel_axis=axis).state
        assert_within(step_.y, theirs, FLOAT32_TOL, f"step {step}: Keras rule's output")
        assert_within(keras_rule.running_mean, keras_now["moving_mean"], FLOAT32_TOL, f"step {step}: rule's mean")
        assert_within(keras_rule.running_var, keras_now["moving_variance"], FLOAT32_TOL, f"step {step}: rule's var")
        # Keras's moving variance averages σ²_B, the module's m/(m−1)·σ²_B: the one difference the note names.
        assert_within(ported.module.running_var, bnlab_rule.running_var, FLOAT32_TOL, f"step {step}: module var")
    # After training, converting again carries Keras's statistics over exactly: inference matches.
    again = compat.from_keras(layer)
    assert_within(run_module(again, xs[0], train=False), keras_call(layer, xs[0], False), FLOAT32_TOL,
                  "inference after training")


def random_module(module_class: type[torch.nn.Module], channels: int, seed: int = 2, **options: Any) -> Any:
    """A bnlab module with random γ, β and running statistics."""
    module = module_class(channels, **options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.running_mean.copy_(torch.randn(channels, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(channels, generator=gen))
        if module.weight is not None:
            module.weight.copy_(1 + 0.5 * torch.randn(channels, generator=gen))
        if module.bias is not None:
            module.bias.copy_(torch.randn(channels, generator=gen))
    return module


# (bnlab module class, input shape in Keras's layout, channels_last, input_rank)
MODULES = [
    pytest.param("BatchNorm2d", (6, 5, 4, 3), True, None, id="2d-NHWC"),
    pytest.param("BatchNorm1d", (8, 5), True, 2, id="1d-NC"),
    pytest.param("BatchNorm1d", (4, 6, 7), False, 3, id="1d-NCL-channels-first"),
    pytest.param("BatchNorm3d", (2, 3, 4, 4, 5), True, None, id="3d-NDHWC"),
]


@pytest.mark.parametrize(("class_name", "shape", "channels_last", "input_rank"), MODULES)
def test_to_keras_infers_and_trains_as_the_module(keras: ModuleType, class_name: str, shape: tuple[int, ...],
                                                  channels_last: bool, input_rank: int | None) -> None:
    axis = -1 if channels_last else 1
    # A keras-convention module (what from_keras gives): Keras's layer then matches its moving variance too.
    module = random_module(getattr(bnlab_nn, class_name), shape[axis], momentum=0.2, eps=1e-4, convention="keras")
    layer = compat.to_keras(module, channels_last=channels_last, input_rank=input_rank)
    assert (layer.axis, layer.momentum, layer.epsilon) == (axis, 0.8, 1e-4)
    ported = compat.Ported(module, channels_last and len(shape) > 2)
    xs = batches(shape, axis, seed=3)
    assert_within(keras_call(layer, xs[0], False), run_module(ported, xs[0], train=False), FLOAT32_TOL, "inference")
    for step, x in enumerate(xs):
        theirs, ours = keras_call(layer, x, True), run_module(ported, x, train=True)
        assert_within(theirs, ours, FLOAT32_TOL, f"step {step}: training output")
        assert_within(weights_by_name(layer)["moving_mean"], module.running_mean, FLOAT32_TOL, f"step {step}: mean")
        assert_within(weights_by_name(layer)["moving_variance"], module.running_var, FLOAT32_TOL,
                      f"step {step}: var")
    assert_within(keras_call(layer, xs[0], False), run_module(ported, xs[0], train=False), FLOAT32_TOL,
                  "inference after training")


def test_keras_round_trip_is_exact(keras: ModuleType) -> None:
    module = random_module(bnlab_nn.BatchNorm2d, 5, momentum=0.1, eps=1e-5)
    back = compat.from_keras(compat.to_keras(module)).module
    assert (back.momentum, back.eps) == (0.1, 1e-5)  # 1 − (1 − 0.1) would be 0.09999999999999998
    for name, value in module.state_dict().items():
        if name != "num_batches_tracked":
            assert torch.equal(back.state_dict()[name], value), name
    layer = make_layer(keras, (4, 3, 3, 6), -1, momentum=0.99, epsilon=1e-3)
    again = compat.to_keras(compat.from_keras(layer).module)
    assert (again.momentum, again.epsilon) == (0.99, 1e-3)
    for name, value in weights_by_name(layer).items():
        assert np.array_equal(weights_by_name(again)[name], value), name


@pytest.mark.parametrize(("shape", "axis"), [LAYOUTS[0], LAYOUTS[2]])
def test_keras_rule_over_steps_at_kerass_default_momentum(keras: ModuleType, shape: tuple[int, ...],
                                                          axis: int) -> None:
    # The yardstick for the module-level convention="keras" to come, at Keras's defaults (momentum 0.99, so the
    # moving statistics move little per step: compared on the change, not only the value). Keras computes batch
    # norm in float32 whatever the input (its result_type turns float64 into float32), so float32 is the
    # precision this can be checked at; a stored unbiased variance would be off by m/(m−1) − 1 ≥ 2e-3 here.
    layer = make_layer(keras, shape, axis, momentum=0.99)
    rule = start = keras_state(layer)
    for step, x in enumerate(batches(shape, axis, seed=4, steps=6)):
        theirs = keras_call(layer, x, True)
        step_ = compat.train_step_reference(x, rule, compat.KERAS, channel_axis=axis)  # Keras's default 0.99
        rule = step_.state
        now = weights_by_name(layer)
        assert_within(step_.y, theirs, FLOAT32_TOL, f"step {step}: output")
        for ours, theirs_, initial, what in ((rule.running_mean, now["moving_mean"], start.running_mean, "mean"),
                                             (rule.running_var, now["moving_variance"], start.running_var, "var")):
            assert_within(ours - initial, theirs_ - initial.numpy(), 1e-5, f"step {step}: change of moving {what}")
    x = batches(shape, axis, seed=5, steps=1)[0]
    assert_within(compat.infer_reference(x, rule, compat.KERAS, channel_axis=axis), keras_call(layer, x, False),
                  FLOAT32_TOL, "inference")
    float64_layer = make_layer(keras, shape, axis, dtype="float64")
    x64 = x.double()
    keras64 = keras_call(float64_layer, x64, True)
    rule64 = compat.train_step_reference(x64, keras_state(float64_layer), compat.KERAS, channel_axis=axis).y
    assert keras64.dtype == torch.float64 and FLOAT64_TOL < max_difference(keras64, rule64) < FLOAT32_TOL


@pytest.mark.parametrize(("center", "scale"), [pytest.param(True, False, id="no-scale"),
                                               pytest.param(False, True, id="no-center"),
                                               pytest.param(False, False, id="neither")])
def test_keras_without_scale_or_center(keras: ModuleType, center: bool, scale: bool) -> None:
    shape = (5, 3, 3, 4)
    layer = make_layer(keras, shape, -1, center=center, scale=scale)
    ported = compat.from_keras(layer)
    module = ported.module
    assert (module.bias is not None) == center and module.affine == (center or scale)
    if center and not scale:
        assert not module.weight.requires_grad and torch.equal(module.weight, torch.ones(4))
        assert any("no scale" in note for note in ported.notes)
    x = batches(shape, -1, steps=1)[0]
    assert_within(run_module(ported, x, train=True), keras_call(layer, x, True), FLOAT32_TOL, "training output")
    back = compat.keras_config(module)
    assert (back["center"], back["scale"]) == (center, scale or center)  # a fixed γ = 1 goes back as a scale


def test_one_pass_variance_is_kerass_float32_error_not_the_conversion(keras: ModuleType) -> None:
    # Keras's torch backend takes Var = E[x²] − E[x]² in float32: with channel means 100 times the spread its
    # output is off the float64 rule by ~3e-4 (measured), the module's (torch's two-pass statistics) by ~1e-6.
    shape = (16, 4, 4, 3)
    layer = make_layer(keras, shape, -1)
    ported = compat.from_keras(layer)
    x = (100.0 + torch.randn(shape, dtype=torch.float64)).float()
    rule = compat.train_step_reference(x, keras_state(layer), compat.KERAS, momentum=0.9)
    keras_error = max_difference(keras_call(layer, x, True), rule.y)
    module_error = max_difference(run_module(ported, x, train=True), rule.y)
    assert keras_error > 1e-4 > 10 * module_error


def test_bad_keras_layers_are_clear_errors(keras: ModuleType) -> None:
    with pytest.raises(ValueError, match="not built"):
        compat.from_keras(keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match="renorm"):
        compat.from_keras(make_layer(keras, (2, 3), -1, renorm=True))
    with pytest.raises(ValueError, match="neither the channels-last"):
        compat.from_keras(make_layer(keras, (2, 3, 4, 5), 2))
    with pytest.raises(TypeError, match="BatchNormalization"):
        compat.from_keras(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="convention must be 'keras'"):
        compat.from_keras(make_layer(keras, (2, 3), -1), convention="darknet")
    with pytest.raises(ValueError, match="input_rank=2 or 3"):
        compat.to_keras(bnlab_nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="cumulative average"):
        compat.to_keras(bnlab_nn.BatchNorm2d(3, momentum=None))
    with pytest.raises(ValueError, match="track_running_stats"):
        compat.to_keras(bnlab_nn.BatchNorm2d(3, track_running_stats=False))


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_a_layer_converted_with_the_defaults_trains_as_keras(keras: ModuleType, shape: tuple[int, ...],
                                                             axis: int) -> None:
    # from_keras's default convention="keras" makes the module's moving variance Keras's (σ²_B averaged): outputs
    # and both moving statistics then match Keras over several steps, and in inference before and after.
    layer = make_layer(keras, shape, axis)
    ported = compat.from_keras(layer)
    assert ported.module.convention == "keras" and ported.notes == ()
    xs = batches(shape, axis)
    assert_within(run_module(ported, xs[0], train=False), keras_call(layer, xs[0], False), FLOAT32_TOL,
                  "inference before training")
    for step, x in enumerate(xs):
        ours, theirs = run_module(ported, x, train=True), keras_call(layer, x, True)
        assert_within(ours, theirs, FLOAT32_TOL, f"step {step}: training output")
        keras_now = weights_by_name(layer)
        assert_within(ported.module.running_mean, keras_now["moving_mean"], FLOAT32_TOL, f"step {step}: mean")
        assert_within(ported.module.running_var, keras_now["moving_variance"], FLOAT32_TOL, f"step {step}: var")
    assert_within(run_module(ported, xs[0], train=False), keras_call(layer, xs[0], False), FLOAT32_TOL,
                  "inference after training")
