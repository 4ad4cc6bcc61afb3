"""BatchNormAct1d/2d/3d: torch's state_dict, torch's numbers, the save modes, the γ = 0 rule and saved bytes."""

from __future__ import annotations

import pytest
import torch
from benchmarks.memory import saved_bytes
from torch import nn

import bnlab
from bnlab.kernels import available_backends
from tolerances import max_error

TORCH_ACT = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "silu": nn.SiLU(), "elu": nn.ELU(),
             "identity": nn.Identity()}
BACKENDS = available_backends("cpu")  # triton runs under the interpreter when there is no GPU
CASES = [
    pytest.param(bnlab.nn.BatchNormAct1d, nn.BatchNorm1d, (8, 5), id="1d"),
    pytest.param(bnlab.nn.BatchNormAct2d, nn.BatchNorm2d, (4, 6, 5, 5), id="2d"),
    pytest.param(bnlab.nn.BatchNormAct3d, nn.BatchNorm3d, (2, 3, 3, 4, 4), id="3d"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("ours_cls", "torch_cls", "shape"), CASES)
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "silu", "elu", "identity"])
def test_matches_torch_sequence(backend, ours_cls, torch_cls, shape, activation) -> None:
    theirs = torch_cls(shape[1])
    theirs.weight.data.uniform_(0.5, 1.5)
    theirs.bias.data.normal_()
    ours = ours_cls(shape[1], activation=activation, negative_slope=0.1, backend=backend)
    ours.load_state_dict(theirs.state_dict())  # a torch checkpoint loads as it is
    x, r = torch.randn(shape, dtype=torch.float64).float(), torch.randn(shape)
    for training in (True, False):
        ours.train(training), theirs.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ra, rb = r.clone().requires_grad_(), r.clone().requires_grad_()
        y = ours(xa, ra)
        y_t = TORCH_ACT[activation](theirs(xb) + rb)
        assert max_error(y, y_t) < 1e-5
        g = torch.randn_like(y)
        y.backward(g), y_t.backward(g)
        for a, b in ((xa.grad, xb.grad), (ra.grad, rb.grad), (ours.weight.grad, theirs.weight.grad),
                     (ours.bias.grad, theirs.bias.grad)):
            assert max_error(a, b) < 1e-4
        ours.zero_grad(), theirs.zero_grad()
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked == theirs.num_batches_tracked == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gamma_with_save_output_keeps_gradients_exact(backend) -> None:
    """γ = 0 in a channel: x̂ cannot come from y there, so that call saves x; gradients equal save="input"."""
    layers = {save: bnlab.nn.BatchNormAct2d(4, activation="leaky_relu", save=save, backend=backend)
              for save in ("input", "output")}
    for layer in layers.values():
        layer.weight.data = torch.tensor([1.0, 0.0, -2.0, 0.5])
        layer.bias.data = torch.tensor([0.1, 0.2, -0.3, 0.0])
    x = torch.randn(3, 4, 5, 5)
    grads, saved = {}, {}
    for save, layer in layers.items():
        xi = x.clone().requires_grad_()
        saved[save] = saved_bytes(layer, xi)
        y = layer(xi)
        y.backward(torch.ones_like(y))
        grads[save] = (xi.grad, layer.weight.grad, layer.bias.grad)
    for a, b in zip(grads["input"], grads["output"], strict=True):
        torch.testing.assert_close(a, b)
    assert grads["output"][1][1] != 0  # dγ of the zero channel is the true Σ dz·x̂, not 0
    # Which tensor was kept: with a zero γ, save="output" must have kept x itself (same storage), not y.
    pointers: list[int] = []
    xi = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: pointers.append(t.data_ptr()) or t, lambda t: t):
        y = layers["output"](xi)
    assert xi.data_ptr() in pointers and y.data_ptr() not in pointers


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_gamma_is_recovered_from_output(backend) -> None:
    layer = bnlab.nn.BatchNormAct2d(3, activation="elu", save="output", backend=backend)
    layer.weight.data = torch.tensor([-1.5, 0.7, -0.2])
    reference = bnlab.nn.BatchNormAct2d(3, activation="elu", save="input", backend=backend)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(4, 3, 6, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer(xa).sum().backward(), reference(xb).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu"])
def test_saved_bytes_at_most_55_percent_of_torch(activation) -> None:
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    torch_layer = nn.Sequential(nn.BatchNorm2d(16), TORCH_ACT[activation])
    ours = bnlab.nn.BatchNormAct2d(16, activation=activation, save="output")
    assert saved_bytes(ours, x) <= 0.55 * saved_bytes(torch_layer, x)


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        bnlab.nn.BatchNormAct2d(3, activation="gelu")
    with pytest.raises(ValueError, match="invertible"):
        bnlab.nn.BatchNormAct2d(3, activation="relu", save="output")
    with pytest.raises(ValueError, match="negative_slope > 0"):
        bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", negative_slope=0.0, save="output")
    with pytest.raises(ValueError, match="save must be"):
        bnlab.nn.BatchNormAct2d(3, save="both")
    layer = bnlab.nn.BatchNormAct2d(3)
    with pytest.raises(ValueError, match="residual must match"):
        layer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="expected 4D input"):
        layer(torch.randn(2, 3))
    assert "save='input'" in repr(layer) and "activation='relu'" in repr(layer)


def test_freeze_switches_reach_the_fused_layer() -> None:
    layer = bnlab.nn.BatchNormAct2d(3, activation="relu")
    layer.train()
    frozen = bnlab.freeze(layer)  # running statistics, no updates, γ/β frozen
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    before = frozen.running_mean.clone()
    y = frozen(x)
    assert torch.equal(frozen.running_mean, before) and int(frozen.num_batches_tracked) == 0
    expected = torch.relu(torch.nn.functional.batch_norm(x, frozen.running_mean, frozen.running_var,
                                                         frozen.weight, frozen.bias, False))
    torch.testing.assert_close(y, expected)


def test_a_failed_call_leaves_the_counter_alone() -> None:
    layer = bnlab.nn.BatchNormAct2d(3)
    with pytest.raises(ValueError, match="residual must match"):
        layer(torch.randn(2, 3, 4, 4), residual=torch.randn(2, 3, 4, 5))
    assert int(layer.num_batches_tracked) == 0


FUSED_BACKENDS = BACKENDS  # every backend runs the fused calls (native composes PyTorch's ops)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saturated_elu_output_keeps_gradients_finite(backend: str, dtype: torch.dtype) -> None:
    # β far below zero: z ≪ 0, so ELU's output rounds to exactly −1, whose inverse log(1 + y) is −∞.
    x = torch.randn(16, 3, 4, 4).to(dtype)
    grads = {}
    for save in ("input", "output"):
        layer = bnlab.nn.BatchNormAct2d(3, activation="elu", save=save, backend=backend)
        with torch.no_grad():
            layer.bias.fill_(-40.0)
        xa = x.clone().requires_grad_()
        layer(xa).float().sum().backward()
        grads[save] = (xa.grad.float(), layer.weight.grad)
    assert torch.isfinite(grads["output"][0]).all() and torch.isfinite(grads["output"][1]).all()
    torch.testing.assert_close(grads["output"][1], grads["input"][1])
    torch.testing.assert_close(grads["output"][0], grads["input"][0])


@pytest.mark.parametrize("backend", [n for n in FUSED_BACKENDS if n != "triton"])  # gradcheck needs float64
@pytest.mark.parametrize("activation", ["relu", "silu", "elu"])
def test_double_backward_through_the_fused_path(backend: str, activation: str) -> None:
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bnlab.fused.batch_norm_act(x, None, None, w, b, training=True, residual=r, activation=activation,
                                          backend=backend)

    assert torch.autograd.gradgradcheck(f, (x, r, w, b))


def test_double_backward_with_save_output_says_why_not() -> None:
    layer = bnlab.nn.BatchNormAct1d(3, activation="leaky_relu", save="output", backend="reference").double()
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x).square().sum()
    with pytest.raises(RuntimeError, match=r"save='output'.*use save='input'"):
        torch.autograd.grad(y, x, create_graph=True)


def test_torch_fx_traces_the_fused_layer_and_keeps_modes_switchable() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.nn.BatchNormAct2d(4, activation="silu"))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(traced(x), model(x))
    traced.eval()
    model.eval()
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("chosen_by", ["argument", "environment"])
def test_save_output_runs_on_native_itself(monkeypatch: pytest.MonkeyPatch, chosen_by: str) -> None:
    # native has no fused kernels: it composes PyTorch's ops, saving y alone, instead of switching backend.
    calls: list[str] = []
    for name in ("native", "reference", "cpu"):
        if name in BACKENDS:
            backend = bnlab.kernels.get_backend(name)
            original = type(backend).forward_train
            monkeypatch.setattr(type(backend), "forward_train",
                                lambda self, *a, _o=original, **k: calls.append(self.name) or _o(self, *a, **k))
    if chosen_by == "environment":
        monkeypatch.setenv("BNLAB_BACKEND", "native")
    layer = bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", save="output",
                                    backend="native" if chosen_by == "argument" else "auto")
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    y = layer(x)
    assert calls == ["native"]
    pointers: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: pointers.append(t.data_ptr()) or t, lambda t: t):
        y = layer(x)
    assert y.data_ptr() in pointers and x.data_ptr() not in pointers
    reference = bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", backend="reference")
    reference.load_state_dict(layer.state_dict())
    xr = x.detach().clone().requires_grad_()
    g = torch.randn_like(y)
    y.backward(g)
    reference(xr).backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
