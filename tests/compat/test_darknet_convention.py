"""``convention="darknet"`` on bnlab modules: against compat's float64 darknet rule, against darknet's own layer
(``bnlab.reference.darknet``, through ``compat.from_darknet``), the exact gradient, the state_dict and the errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bnlab
from bnlab import compat
from bnlab.reference import darknet
from cases import make_input
from compat.frameworks import FLOAT32_TOL, assert_within
from conftest import require
from tolerances import ATOL, KERNEL_FLOOR, RTOL

# darknet's .99f/.01f are float32 literals; a float64 module's momentum 0.01 is 0.01 exactly. The rule with the
# decimal weights is the yardstick in float64 (in float32 the two round alike).
DECIMAL_DARKNET = dataclasses.replace(compat.DARKNET, momentum=0.99, fixed_update=(0.99, 0.01))
EPS = compat.DARKNET.eps

LAYERS = {2: bnlab.BatchNorm1d, 3: bnlab.BatchNorm1d, 4: bnlab.BatchNorm2d, 5: bnlab.BatchNorm3d}


def darknet_module(channels: int, rank: int, backend: str = "auto", dtype: torch.dtype = torch.float32,
                   **options: object) -> torch.nn.Module:
    """A darknet-convention layer with γ and β away from 1 and 0."""
    layer = LAYERS[rank](channels, eps=EPS, momentum=0.01, backend=backend, convention="darknet",
                         **options).to(dtype)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def state_of(layer: torch.nn.Module) -> compat.BatchNormState:
    return compat.BatchNormState(layer.running_mean.double(), layer.running_var.double(),
                                 layer.weight.detach().double(), layer.bias.detach().double())


def output_tol(reference: torch.Tensor, dtype: torch.dtype) -> float:
    return KERNEL_FLOOR[dtype] * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, id="float64"),
                                   pytest.param(torch.float32, id="float32")])
@pytest.mark.parametrize(("shape", "layout"), [
    pytest.param((6, 4, 3, 3), "contiguous", id="2d"),
    pytest.param((8, 5), "contiguous", id="1d-NC"),
    pytest.param((3, 2, 7), "contiguous", id="1d-NCL"),
    pytest.param((4, 8, 5, 5), "channels_last", id="2d-channels_last"),
    pytest.param((2, 3, 2, 3, 4), "contiguous", id="3d"),
])
def test_training_steps_and_eval_follow_darknets_float64_rule(backend: str, dtype: torch.dtype,
                                                               shape: tuple[int, ...], layout: str) -> None:
    require(backend, dtype)
    layer = darknet_module(shape[1], len(shape), backend, dtype)
    state = state_of(layer)
    for step in range(4):
        x = make_input(shape, layout, dtype) * (1 + step)
        rule = compat.train_step_reference(x, state, DECIMAL_DARKNET, channel_axis=1)
        state = rule.state
        y = layer(x)
        assert y.dtype == dtype
        assert (y.double() - rule.y).abs().max().item() <= output_tol(rule.y, dtype), f"step {step} output"
        for ours, theirs, what in ((layer.running_mean, state.running_mean, "mean"),
                                   (layer.running_var, state.running_var, "var")):
            torch.testing.assert_close(ours.double(), theirs, rtol=RTOL[dtype], atol=ATOL[dtype],
                                       msg=lambda m, w=what, s=step: f"step {s} running {w}: {m}")
    x = make_input(shape, layout, dtype)
    expected = compat.infer_reference(x, state, DECIMAL_DARKNET, channel_axis=1)
    y = layer.eval()(x)
    assert (y.double() - expected).abs().max().item() <= output_tol(expected, dtype), "eval output"


def test_a_ported_darknet_layer_matches_darknets_forward_in_training_and_eval(backend: str) -> None:
    # darknet's rolling statistics start at 0: from_darknet copies the fresh layer's, so the module starts there too.
    layer = darknet.make_batchnorm_layer(4, 5, 3, 6)
    gen = torch.Generator().manual_seed(1)
    layer.scales = 0.5 + torch.rand(6, generator=gen)
    layer.biases = torch.randn(6, generator=gen)
    module = compat.from_darknet(layer, backend=backend).module
    assert module.convention == "darknet" and torch.equal(module.running_var, torch.zeros(6))
    offsets = torch.linspace(-1, 2, 6).reshape(1, 6, 1, 1)
    for step in range(5):
        x = offsets + (1 + step / 2) * torch.randn(4, 6, 3, 5, generator=gen)
        theirs = darknet.forward_batchnorm_layer(layer, x.flatten(), train=True)
        ours = module.train()(x)
        assert_within(ours.flatten(), theirs, FLOAT32_TOL, f"step {step}: training output")
        assert_within(module.running_mean, layer.rolling_mean, FLOAT32_TOL, f"step {step}: rolling mean")
        assert_within(module.running_var, layer.rolling_variance, FLOAT32_TOL, f"step {step}: rolling variance")
    x = offsets + torch.randn(4, 6, 3, 5, generator=gen)
    theirs = darknet.forward_batchnorm_layer(layer, x.flatten(), train=False)
    assert_within(module.eval()(x).flatten(), theirs, FLOAT32_TOL, "eval output")
    back = compat.to_darknet(module, 4, 5, 3)  # and back: the module's numbers, exactly
    for name, value in (("scales", module.weight), ("biases", module.bias), ("rolling_mean", module.running_mean),
                        ("rolling_variance", module.running_var)):
        assert torch.equal(getattr(back, name), value.detach()), name


def _darknet_forward64(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """darknet's training forward in float64 torch ops, differentiated by autograd in the test below."""
    dims = [d for d in range(x.dim()) if d != 1]
    view = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    s = ((x - mean).square().sum(dims, keepdim=True) / (x.numel() / x.shape[1] - 1)).sqrt()
    return (x - mean) / (s + EPS) * weight.view(view) + bias.view(view)


@pytest.mark.parametrize(("shape", "layout"), [
    pytest.param((5, 3), "contiguous", id="1d"),
    pytest.param((3, 4, 3, 3), "channels_last", id="2d-channels_last"),
])
def test_the_gradient_is_the_exact_gradient_of_darknets_forward(backend: str, shape: tuple[int, ...],
                                                                layout: str) -> None:
    layer = darknet_module(shape[1], len(shape), backend)
    x = make_input(shape, layout).requires_grad_()
    grad_y = torch.randn(shape)
    y = layer(x)
    dx, dw, db = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad_y)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (layer.weight, layer.bias))
    expected = torch.autograd.grad(_darknet_forward64(x64, w64, b64), (x64, w64, b64), grad_y.double())
    for ours, theirs, what in ((dx, expected[0], "dx"), (dw, expected[1], "dγ"), (db, expected[2], "dβ")):
        assert (ours.double() - theirs).abs().max().item() <= output_tol(theirs, torch.float32), what


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_float64(mode: str) -> None:
    require("reference", torch.float64)
    layer = darknet_module(3, 4, "reference", torch.float64)
    with torch.no_grad():
        layer.running_var.uniform_(0.5, 2.0)
        layer.running_mean.uniform_(-1, 1)
    layer.train(mode == "train")
    x = make_input((3, 3, 2, 2), "contiguous", torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: layer(t), (x,))


def test_a_constant_channel_has_a_finite_gradient() -> None:
    # s = 0: √ is not differentiable there; x̂ = 0 and the Σ(dz·x̂) term is left out (c = 0), dx = γ(dz − Σdz/m)/ε.
    layer = darknet_module(2, 2, "reference")
    x = torch.stack([torch.full((4,), 3.0), torch.randn(4)], dim=1).requires_grad_()
    (dx,) = torch.autograd.grad(layer(x).square().sum(), x)
    assert torch.isfinite(dx).all()


def test_the_state_dict_is_torchs(backend: str) -> None:
    torch_layer = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        torch_layer.running_var.uniform_(0.5, 2)
    layer = darknet_module(4, 4, backend)
    assert {k: (v.shape, v.dtype) for k, v in layer.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in torch_layer.state_dict().items()}
    layer.load_state_dict(torch_layer.state_dict())
    for name, value in torch_layer.state_dict().items():
        assert torch.equal(layer.state_dict()[name], value), name


def test_one_value_per_channel_is_refused_or_normalized_with_the_running_statistics(backend: str) -> None:
    strict = darknet_module(3, 2, backend)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        strict(torch.randn(1, 3))
    assert int(strict.num_batches_tracked) == 0
    lenient = darknet_module(3, 2, backend, small_batch="running")
    with torch.no_grad():
        lenient.running_var.uniform_(0.5, 2)
    before = state_of(lenient)
    x = torch.randn(1, 3)
    expected = compat.infer_reference(x, before, DECIMAL_DARKNET, channel_axis=1)
    torch.testing.assert_close(lenient(x).double(), expected, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])
    assert torch.equal(lenient.running_var.double(), before.running_var)


def test_freeze_policies_follow_darknets_rules(backend: str) -> None:
    layer = darknet_module(3, 4, backend)
    with torch.no_grad():
        layer.running_var.uniform_(0.5, 2)
    x = make_input((4, 3, 3, 3), "contiguous")
    # Running statistics normalize (darknet's eval map) and the batch still updates them.
    running = bnlab.freeze(layer, normalize_with="running", update_stats=True, train_affine=None).train()
    before = state_of(running)
    y = running(x)
    torch.testing.assert_close(y.double(), compat.infer_reference(x, before, DECIMAL_DARKNET, channel_axis=1),
                               rtol=RTOL[torch.float32], atol=KERNEL_FLOOR[torch.float32])
    after = compat.train_step_reference(x, before, DECIMAL_DARKNET, channel_axis=1).state
    torch.testing.assert_close(running.running_var.double(), after.running_var, rtol=RTOL[torch.float32],
                               atol=ATOL[torch.float32])
    # Batch statistics normalize in eval mode, and nothing moves.
    batch = bnlab.freeze(layer, normalize_with="batch", update_stats=False, train_affine=None).eval()
    rule = compat.train_step_reference(x, state_of(batch), DECIMAL_DARKNET, channel_axis=1)
    torch.testing.assert_close(batch(x).double(), rule.y, rtol=RTOL[torch.float32], atol=KERNEL_FLOOR[torch.float32])
    assert torch.equal(batch.running_var, layer.running_var)


def test_compiled_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()
    eager = darknet_module(3, 4, "reference")
    compiled_layer = darknet_module(3, 4, "reference")
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = make_input((4, 3, 5, 5), "contiguous")
    torch.testing.assert_close(compiled(x), eager(x))
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
    compiled_layer.eval()
    eager.eval()
    torch.testing.assert_close(compiled(x), eager(x))


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda: bnlab.BatchNorm2d(3, convention="darknet"), "pass momentum=0.01", id="torch-momentum"),
    pytest.param(lambda: bnlab.BatchNorm2d(3, momentum=None, convention="darknet"), "momentum=None",
                 id="cumulative-momentum"),
    pytest.param(lambda: compat.to_darknet(bnlab.BatchNorm2d(3), 1, 1, 1), "convention='torch'",
                 id="to_darknet-torch-layer"),
    pytest.param(lambda: compat.to_darknet(bnlab.BatchNorm2d(3, momentum=0.01, convention="darknet"), 1, 1, 1),
                 "darknet's ε", id="to_darknet-other-eps"),
    pytest.param(lambda: compat.keras_config(bnlab.BatchNorm2d(3, momentum=0.01, convention="darknet")),
                 "convention='darknet'", id="to_keras-darknet"),
    pytest.param(lambda: compat.flax_variables(bnlab.BatchNorm2d(3, momentum=0.01, convention="darknet")),
                 "convention='darknet'", id="to_flax-darknet"),
])
def test_bad_darknet_settings_are_clear_errors(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]
