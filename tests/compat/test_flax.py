"""bnlab.compat against Flax linen's nn.BatchNorm itself (JAX on CPU): variables converted to bnlab and back give
Flax's outputs and statistics within 1e-6 in float32 where a bnlab module can represent them (inference; training
outputs and the running mean), and compat's Flax rule gives Flax's numbers to float64 rounding (JAX in x64 mode)
everywhere, the stored biased variance included."""

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
from compat.frameworks import FLOAT32_TOL, FLOAT64_TOL, assert_within, batches, run_module

LAYOUTS = [
    pytest.param((6, 5, 4, 3), -1, id="NHWC"),
    pytest.param((8, 5), -1, id="NC"),
    pytest.param((4, 7, 6), -1, id="NLC"),
    pytest.param((2, 3, 4, 4, 5), -1, id="NDHWC"),
    pytest.param((3, 4, 5, 5), 1, id="NCHW-axis1"),
]

Variables = dict[str, dict[str, Any]]


def random_variables(channels: int, dtype: Any = np.float32, seed: int = 1, scale: bool = True,
                     bias: bool = True) -> Variables:
    rng = np.random.default_rng(seed)
    params = {}
    if scale:
        params["scale"] = (1 + 0.5 * rng.standard_normal(channels)).astype(dtype)
    if bias:
        params["bias"] = rng.standard_normal(channels).astype(dtype)
    return {"params": params, "batch_stats": {"mean": rng.standard_normal(channels).astype(dtype),
                                              "var": (0.5 + rng.random(channels)).astype(dtype)}}


_COMPILED: dict[int, tuple[Any, Any]] = {}  # id(bn) → (bn, its jitted apply): one XLA compile per layer and shape


def flax_step(bn: Any, variables: Variables, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, Variables]:
    """One call of the Flax layer (jitted, as Flax is used in training): its output as a torch tensor and the
    variables after it."""
    import jax

    if id(bn) not in _COMPILED or _COMPILED[id(bn)][0] is not bn:
        _COMPILED[id(bn)] = (bn, jax.jit(bn.apply, static_argnames=("use_running_average", "mutable")))
    apply = _COMPILED[id(bn)][1]
    y, mutated = apply(variables, x.numpy(), use_running_average=not train, mutable=("batch_stats",))
    return torch.from_numpy(np.array(y)), {**variables, "batch_stats": dict(mutated["batch_stats"])}


def state_of(variables: Variables) -> BatchNormState:
    def t(group: str, name: str) -> torch.Tensor | None:
        value = variables[group].get(name)
        return None if value is None else torch.from_numpy(np.array(value))

    mean, var = t("batch_stats", "mean"), t("batch_stats", "var")
    assert mean is not None and var is not None
    return BatchNormState(mean, var, t("params", "scale"), t("params", "bias"))


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_from_flax_with_the_torch_convention_infers_and_trains_as_flax_but_for_the_variance(
        linen: ModuleType, shape: tuple[int, ...], axis: int) -> None:
    bn = linen.BatchNorm(momentum=0.9, epsilon=1e-5, axis=axis)
    variables = random_variables(shape[axis])
    ported = compat.from_flax(variables, bn, input_rank=len(shape), convention="torch")
    assert ported.module.convention == "torch" and any("convention='torch'" in n for n in ported.notes)
    assert ported.channels_last == (axis == -1 and len(shape) > 2)
    flax_rule = bnlab_rule = state_of(variables)
    unbiased_flax = dataclasses.replace(compat.FLAX, variance_stored="unbiased")
    xs = batches(shape, axis)
    assert_within(run_module(ported, xs[0], train=False), flax_step(bn, variables, xs[0], False)[0], FLOAT32_TOL,
                  "inference")
    for step, x in enumerate(xs):
        ours = run_module(ported, x, train=True)
        theirs, variables = flax_step(bn, variables, x, True)
        assert_within(ours, theirs, FLOAT32_TOL, f"step {step}: training output")
        assert_within(ported.module.running_mean, variables["batch_stats"]["mean"], FLOAT32_TOL, f"step {step}: mean")
        step_ = compat.train_step_reference(x, flax_rule, compat.FLAX, momentum=0.9, channel_axis=axis)
        flax_rule = step_.state
        bnlab_rule = compat.train_step_reference(x, bnlab_rule, unbiased_flax, momentum=0.9,
                                                 channel_axis=axis).state
        assert_within(step_.y, theirs, FLOAT32_TOL, f"step {step}: Flax rule's output")
        assert_within(flax_rule.running_var, variables["batch_stats"]["var"], FLOAT32_TOL, f"step {step}: rule's var")
        # Flax's var averages σ²_B, the module's m/(m−1)·σ²_B: the one difference the note names.
        assert_within(ported.module.running_var, bnlab_rule.running_var, FLOAT32_TOL, f"step {step}: module var")
    again = compat.from_flax(variables, bn, input_rank=len(shape))
    assert_within(run_module(again, xs[0], train=False), flax_step(bn, variables, xs[0], False)[0], FLOAT32_TOL,
                  "inference after training")


@pytest.mark.parametrize(("class_name", "shape", "channels_last"), [
    pytest.param("BatchNorm2d", (6, 5, 4, 3), True, id="2d-NHWC"),
    pytest.param("BatchNorm1d", (4, 6, 7), False, id="1d-NCL-channels-first"),
    pytest.param("BatchNorm3d", (2, 3, 4, 4, 5), True, id="3d-NDHWC"),
])
def test_to_flax_infers_and_trains_as_the_module(linen: ModuleType, class_name: str, shape: tuple[int, ...],
                                                 channels_last: bool) -> None:
    axis = -1 if channels_last else 1
    channels = shape[axis]
    # A flax-convention module (what from_flax gives): Flax's layer then matches its running variance too.
    module = getattr(bnlab_nn, class_name)(channels, momentum=0.2, eps=1e-4, convention="flax")
    with torch.no_grad():
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
        module.weight.uniform_(0.5, 2)
        module.bias.uniform_(-1, 1)
    bn, variables = compat.to_flax(module, channels_last=channels_last)
    assert (bn.axis, bn.momentum, bn.epsilon) == (axis, 0.8, 1e-4)
    ported = compat.Ported(module, channels_last and len(shape) > 2)
    xs = batches(shape, axis, seed=3)
    assert_within(flax_step(bn, variables, xs[0], False)[0], run_module(ported, xs[0], train=False), FLOAT32_TOL,
                  "inference")
    for step, x in enumerate(xs):
        theirs, variables = flax_step(bn, variables, x, True)
        assert_within(theirs, run_module(ported, x, train=True), FLOAT32_TOL, f"step {step}: training output")
        assert_within(variables["batch_stats"]["mean"], module.running_mean, FLOAT32_TOL, f"step {step}: mean")
        assert_within(variables["batch_stats"]["var"], module.running_var, FLOAT32_TOL, f"step {step}: var")
    assert_within(flax_step(bn, variables, xs[0], False)[0], run_module(ported, xs[0], train=False), FLOAT32_TOL,
                  "inference after training")


def test_flax_round_trip_is_exact_and_leaves_the_variables_alone() -> None:
    # No Flax needed: variables are plain arrays.
    variables = random_variables(6)
    before = {group: {k: v.copy() for k, v in entries.items()} for group, entries in variables.items()}
    ported = compat.from_flax(variables, input_rank=4)  # Flax's defaults: momentum 0.99, epsilon 1e-5
    assert (ported.module.momentum, ported.module.eps) == (0.01, 1e-5)
    back = compat.flax_variables(ported.module)
    run_module(ported, batches((4, 3, 3, 6), -1, steps=1)[0], train=True)  # updates the module's buffers only
    for group, entries in before.items():
        for name, value in entries.items():
            assert np.array_equal(variables[group][name], value), f"{group}/{name} changed"
    for group, entries in variables.items():
        for name, value in entries.items():
            assert np.array_equal(back[group][name], value), f"{group}/{name}"
    config = compat.flax_config(ported.module)
    assert config == {"axis": -1, "momentum": 0.99, "epsilon": 1e-5, "use_scale": True, "use_bias": True}


@pytest.mark.parametrize(("shape", "axis"), [LAYOUTS[0], LAYOUTS[1], LAYOUTS[4]])
def test_float64_flax_rule_is_flax(linen: ModuleType, jax: ModuleType, shape: tuple[int, ...], axis: int) -> None:
    # The yardstick for the module-level convention="flax" to come, checked to float64 rounding at Flax's
    # defaults (momentum 0.99, epsilon 1e-5).
    with jax.enable_x64(True):
        bn = linen.BatchNorm(axis=axis, dtype=np.float64, param_dtype=np.float64)
        variables = random_variables(shape[axis], dtype=np.float64)
        rule = state_of(variables)
        for step, x in enumerate(batches(shape, axis, dtype=torch.float64, seed=4)):
            theirs, variables = flax_step(bn, variables, x, True)
            step_ = compat.train_step_reference(x, rule, "flax", channel_axis=axis)
            rule = step_.state
            assert theirs.dtype == torch.float64
            assert_within(step_.y, theirs, FLOAT64_TOL, f"step {step}: output")
            assert_within(rule.running_mean, variables["batch_stats"]["mean"], FLOAT64_TOL, f"step {step}: mean")
            assert_within(rule.running_var, variables["batch_stats"]["var"], FLOAT64_TOL, f"step {step}: var")
        x = batches(shape, axis, dtype=torch.float64, seed=5, steps=1)[0]
        assert_within(compat.infer_reference(x, rule, "flax", channel_axis=axis), flax_step(bn, variables, x, False)[0],
                      FLOAT64_TOL, "inference")


@pytest.mark.parametrize(("use_scale", "use_bias"), [pytest.param(False, True, id="no-scale"),
                                                     pytest.param(True, False, id="no-bias"),
                                                     pytest.param(False, False, id="neither")])
def test_flax_without_scale_or_bias(linen: ModuleType, use_scale: bool, use_bias: bool) -> None:
    shape = (5, 3, 3, 4)
    bn = linen.BatchNorm(momentum=0.9, use_scale=use_scale, use_bias=use_bias)
    variables = random_variables(4, scale=use_scale, bias=use_bias)
    ported = compat.from_flax(variables, bn, input_rank=4)
    assert (ported.module.bias is not None) == use_bias and ported.module.affine == (use_scale or use_bias)
    x = batches(shape, -1, steps=1)[0]
    assert_within(run_module(ported, x, train=True), flax_step(bn, variables, x, True)[0], FLOAT32_TOL, "training")


def test_bad_flax_inputs_are_clear_errors(linen: ModuleType) -> None:
    variables = random_variables(3)
    with pytest.raises(ValueError, match="batch_stats"):
        compat.from_flax({"params": variables["params"]}, input_rank=2)
    with pytest.raises(ValueError, match="use_scale=True but params has no 'scale'"):
        compat.from_flax(random_variables(3, scale=False), input_rank=2)
    with pytest.raises(ValueError, match="several feature axes"):
        compat.from_flax(variables, linen.BatchNorm(axis=(1, 2)), input_rank=4)
    with pytest.raises(ValueError, match="neither the channels-last"):
        compat.from_flax(variables, linen.BatchNorm(axis=2), input_rank=4)
    with pytest.raises(ValueError, match="rank 2 to 5"):
        compat.from_flax(variables, input_rank=6)
    with pytest.raises(ValueError, match="convention must be 'flax'"):
        compat.from_flax(variables, input_rank=2, convention="keras")
    with pytest.raises(TypeError, match=r"flax\.linen\.BatchNorm"):
        compat.from_flax(variables, linen.LayerNorm(), input_rank=2)
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        compat.from_flax({**variables, "params": {"scale": np.ones(4), "bias": np.zeros(3)}}, input_rank=2)
    note = compat.from_flax(variables, linen.BatchNorm(axis_name="batch"), input_rank=2).notes
    assert any("axis_name is dropped" in n for n in note)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_a_module_converted_with_the_defaults_trains_as_flax(linen: ModuleType, shape: tuple[int, ...],
                                                             axis: int) -> None:
    # from_flax's default convention="flax": the running variance averages σ²_B as Flax's does; everything matches.
    bn = linen.BatchNorm(momentum=0.9, epsilon=1e-5, axis=axis)
    variables = random_variables(shape[axis])
    ported = compat.from_flax(variables, bn, input_rank=len(shape))
    assert ported.module.convention == "flax" and ported.notes == ()
    assert_within(run_module(ported, batches(shape, axis)[0], train=False),
                  flax_step(bn, variables, batches(shape, axis)[0], False)[0], FLOAT32_TOL, "inference before")
    xs = batches(shape, axis)
    for step, x in enumerate(xs):
        ours = run_module(ported, x, train=True)
        theirs, variables = flax_step(bn, variables, x, True)
        assert_within(ours, theirs, FLOAT32_TOL, f"step {step}: training output")
        assert_within(ported.module.running_mean, variables["batch_stats"]["mean"], FLOAT32_TOL, f"step {step}: mean")
        assert_within(ported.module.running_var, variables["batch_stats"]["var"], FLOAT32_TOL, f"step {step}: var")
    assert_within(run_module(ported, xs[0], train=False), flax_step(bn, variables, xs[0], False)[0], FLOAT32_TOL,
                  "inference after training")
