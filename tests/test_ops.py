"""Autograd and tracing: gradcheck/gradgradcheck, the custom ops, torch.compile, torch.fx and torch.func."""

from __future__ import annotations

import copy

import pytest
import torch

import bnlab
from bnlab import _autograd
from bnlab.kernels import available_backends, get_backend
from bnlab.kernels.registry import name_id
from cases import SMALL_SHAPES, make_input
from conftest import require


@pytest.mark.parametrize(("shape", "layout"), SMALL_SHAPES)
@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_gradcheck_and_gradgradcheck(backend: str, shape: tuple[int, ...], layout: str, training: bool) -> None:
    require(backend, torch.float64)  # gradcheck needs float64 to be meaningful
    x = make_input(shape, layout, torch.float64).requires_grad_()
    c = shape[1]
    weight = torch.randn(c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    running_mean = torch.randn(c, dtype=torch.float64)
    running_var = torch.rand(c, dtype=torch.float64) + 0.5

    def f(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # Fresh buffers per call: gradcheck calls f many times and training mode updates them.
        return bnlab.functional.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias,
                                           training=training, backend=backend)

    # ATen's CPU kernels take milliseconds per call on these tiny shapes, and full mode makes thousands of
    # calls; fast mode checks random projections of the same Jacobians. The reference is checked in full.
    fast = backend != "reference"
    assert torch.autograd.gradcheck(f, (x, weight, bias), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x, weight, bias), fast_mode=fast)


def test_gradcheck_without_weight(backend: str) -> None:
    require(backend, torch.float64)
    x = make_input((5, 3, 4), "contiguous", torch.float64).requires_grad_()
    f = lambda x: bnlab.functional.batch_norm(x, None, None, training=True, backend=backend)  # noqa: E731
    fast = backend != "reference"
    assert torch.autograd.gradcheck(f, (x,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=fast)


@pytest.mark.parametrize("backend_name", available_backends("cpu"))
def test_custom_ops_pass_opcheck(backend_name: str) -> None:
    x = make_input((4, 3, 5), "contiguous").requires_grad_()
    r = make_input((4, 3, 5), "contiguous").requires_grad_()
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    chosen = torch.tensor(name_id(backend_name))
    torch.library.opcheck(_autograd.train_op, (x, None, w, b, 1e-5, "identity", 0.01, "input", chosen))
    torch.library.opcheck(_autograd.train_op, (x.detach().to(memory_format=torch.contiguous_format), None, None,
                                               None, 1e-5, "identity", 0.01, "input", chosen))
    torch.library.opcheck(_autograd.train_op, (x, r, w, b, 1e-5, "relu", 0.01, "input", chosen))
    # save="output": the kept input is an output whose size (0, or all of x) only the kernel knows.
    torch.library.opcheck(_autograd.train_op, (x, None, w, b, 1e-5, "elu", 0.01, "output", chosen))
    zero_gamma = w.detach().clone()
    zero_gamma[1] = 0.0
    torch.library.opcheck(_autograd.train_op, (x, r, zero_gamma.requires_grad_(), b, 1e-5, "leaky_relu", 0.01,
                                               "output", chosen))
    mean, invstd = torch.randn(3), torch.rand(3) + 0.5
    torch.library.opcheck(_autograd.train_backward_op, (torch.randn(4, 3, 5), x.detach(), x.new_empty(0), None,
                                                        w.detach(), None, mean, invstd, "identity", 0.01, "input",
                                                        False, chosen))
    torch.library.opcheck(_autograd.train_backward_op, (torch.randn(4, 3, 5), x.detach(), x.new_empty(0),
                                                        r.detach(), w.detach(), b.detach(), mean, invstd, "silu",
                                                        0.01, "input", True, chosen))
    torch.library.opcheck(_autograd.eval_op, (x, None, torch.zeros(3), torch.ones(3), w, b, 1e-5, "identity", 0.01,
                                              chosen))
    cl = make_input((2, 3, 4, 4), "channels_last")
    torch.library.opcheck(_autograd.eval_op, (cl, None, torch.zeros(3), torch.ones(3), None, None, 1e-5, "elu", 0.01,
                                              chosen))


def test_eager_function_and_custom_op_agree(backend: str) -> None:
    x = make_input((6, 4, 3, 3), "channels_last").requires_grad_()
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    eager = _autograd._TrainFunction.apply(x, None, w, b, 1e-5, "identity", 0.01, "input", get_backend(backend))
    op = _autograd.train_op(x, None, w, b, 1e-5, "identity", 0.01, "input", torch.tensor(name_id(backend)))[:4]
    for e, o in zip(eager, op, strict=True):
        assert torch.equal(e, o)
    g = torch.randn_like(x)
    grads_eager = torch.autograd.grad(eager[0], (x, w, b), g)
    grads_op = torch.autograd.grad(op[0], (x, w, b), g)
    for e, o in zip(grads_eager, grads_op, strict=True):
        assert torch.equal(e, o)
    assert not eager[1].requires_grad and not op[1].requires_grad  # statistics are not differentiable outputs


@pytest.mark.parametrize(("cls", "shape", "momentum"), [
    pytest.param(bnlab.BatchNorm2d, (4, 3, 5, 5), 0.1, id="2d"),
    pytest.param(bnlab.BatchNorm1d, (8, 5), None, id="1d-cumulative"),
])
def test_torch_compile_fullgraph(backend: str, cls: type, shape: tuple[int, ...], momentum: float | None) -> None:
    torch._dynamo.reset()
    eager, compiled_module = cls(shape[1], momentum=momentum, backend=backend), cls(shape[1], momentum=momentum,
                                                                                   backend=backend)
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    for step in range(2):
        x = torch.randn(shape) * (step + 1)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye)
        g = torch.randn(shape)
        ye.backward(g)
        yc.backward(g)
        torch.testing.assert_close(xc.grad, xe.grad)
        torch.testing.assert_close(compiled_module.weight.grad, eager.weight.grad)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_module.state_dict()[key], value, msg=key)
    eager.eval()
    compiled_module.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(compiled(x), eager(x))


def test_torch_compile_with_inductor() -> None:
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4, backend="reference"), torch.nn.ReLU())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    reference_model = copy.deepcopy(model)
    torch.testing.assert_close(compiled(x), reference_model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_mean, reference_model[1].running_mean)
    model.eval()
    reference_model.eval()
    torch.testing.assert_close(compiled(x), reference_model(x), rtol=1e-5, atol=1e-5)


def test_fx_symbolic_trace_keeps_modes_switchable(backend: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4, backend=backend), torch.nn.ReLU())
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 8, 8)
    targets = [node.target for node in traced.graph.nodes]
    assert bnlab.nn.batchnorm.module_forward in targets  # one node per BN, not its inner ops
    torch.testing.assert_close(traced(x), model(x))  # training mode: batch statistics
    traced.eval()
    model.eval()
    assert not traced.get_submodule("1").training
    torch.testing.assert_close(traced(x), model(x))  # eval mode reached the BN through the graph


def test_torch_func_grad(backend: str) -> None:
    x = make_input((5, 3), "contiguous")
    w = torch.randn(3)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return bnlab.functional.batch_norm(x, None, None, w, None, training=True, backend=backend).pow(3).sum()

    expected = torch.func.grad(lambda w: torch.nn.functional.batch_norm(x, None, None, w, None, True).pow(3).sum())(w)
    torch.testing.assert_close(torch.func.grad(loss)(w), expected, rtol=1e-4, atol=1e-4)


def test_torch_compile_first_thing_in_a_fresh_process() -> None:
    # The rest of this suite has resolved backends before it compiles; a user's script may compile first, so
    # that choosing a backend (which may build the CPU kernels) happens while dynamo traces.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch, bnlab
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        compiled(x).sum().backward()
        model.eval()
        torch.testing.assert_close(compiled(x), model(x))
        print("compiled", int(model[1].num_batches_tracked))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 1" in proc.stdout


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_a_call_with_nothing_to_differentiate_skips_the_autograd_function(backend: str, training: bool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Under no_grad (inference, statistics recalibration) the autograd Function would record nothing and costs
    # about 10 µs per call: the kernel runs alone, with the same output and running statistics as with autograd.
    layer = bnlab.BatchNorm2d(3, backend=backend).train(training)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 5, 5)
    with_autograd = copy.deepcopy(layer)
    expected = with_autograd(x)
    assert expected.grad_fn is not None  # the parameters require grad: recorded

    def refuse(*args: object) -> None:
        raise AssertionError("the autograd Function ran for a call with nothing to differentiate")

    monkeypatch.setattr(_autograd._TrainFunction, "apply", refuse)
    monkeypatch.setattr(_autograd._EvalFunction, "apply", refuse)
    with torch.no_grad():
        y = layer(x)
    assert y.grad_fn is None
    assert torch.equal(y, expected.detach())
    assert torch.equal(layer.running_mean, with_autograd.running_mean)
    assert torch.equal(layer.running_var, with_autograd.running_var)


def test_the_statistics_get_no_zero_gradients_allocated_in_backward(backend: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # μ_B, invstd and σ²_B are outputs of the eager Function that never receive a gradient; autograd would
    # materialize a zero tensor for each before every backward call (a cost small layers notice) unless told not to.
    received: list[object] = []
    backward = _autograd._TrainFunction.backward

    def spy(ctx: object, grad_y: torch.Tensor, *statistics: object) -> tuple[object, ...]:
        received.extend(statistics)
        return backward(ctx, grad_y, *statistics)

    monkeypatch.setattr(_autograd._TrainFunction, "backward", staticmethod(spy))
    x = torch.randn(4, 3, 5, requires_grad=True)
    y, *_ = _autograd._TrainFunction.apply(x, None, None, None, 1e-5, "identity", 0.01, "input", get_backend(backend))
    y.backward(torch.randn_like(y))
    assert received == [None, None, None]
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
@pytest.mark.parametrize("fused", [pytest.param(False, id="plain"), pytest.param(True, id="fused")])
def test_a_trace_made_under_no_grad_follows_its_input(backend: str, training: bool, fused: bool) -> None:
    # torch.jit.trace sees a backend's kernel only as the autograd Function's node: a call that skipped the
    # Function under no_grad would be traced as a constant, and the trace would return the tracing input's output
    # for every input (silently: check_trace compares on that same input).
    if backend == "triton":
        pytest.skip("the Triton launch cannot be jit-traced at all (the tracer hands it sizes as tensors): "
                    "a known gap, torch.compile is the way to trace it")
    layer = (bnlab.nn.BatchNormAct2d(3, activation="relu", backend=backend) if fused
             else bnlab.BatchNorm2d(3, backend=backend)).train(training)
    x, other = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 2 + 1
    with torch.no_grad():
        traced = torch.jit.trace(copy.deepcopy(layer), x, check_trace=False)
        expected = copy.deepcopy(layer)(other)
        got = traced(other)
    torch.testing.assert_close(got, expected)
