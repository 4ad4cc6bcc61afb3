"""Near every activation's saturation, against a float64 reference; and how save="output" decides what to keep.

Gradients there are tiny, so errors are judged relative to the gradient's own size (the tolerance table's floor is
in units of the value's scale): a relative error of 0.3 %, which save="output" once gave for ELU outputs near −1,
must fail, while float32 rounding must pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnlab
from bnlab.kernels import available_backends, get_backend
from bnlab.reference import fused as ref
from tolerances import assert_as_accurate_as_torch

BACKENDS = available_backends("cpu")
TORCH_ACT = {"relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, 0.1), "silu": F.silu, "elu": F.elu,
             "identity": lambda z: z}
SATURATION = [  # (activation, save, β): outputs pushed far into the flat (or ill-conditioned) part
    pytest.param("elu", "output", -13.0, id="elu-output-near-minus-1"),
    pytest.param("elu", "output", -4.0, id="elu-output-approaching-minus-1"),
    pytest.param("elu", "input", -13.0, id="elu-input-near-minus-1"),
    pytest.param("silu", "input", -13.0, id="silu-near-0"),
    pytest.param("silu", "input", 13.0, id="silu-near-identity"),
    pytest.param("relu", "input", -13.0, id="relu-flat"),
    pytest.param("leaky_relu", "output", -13.0, id="leaky-output-negative-side"),
    pytest.param("identity", "output", 13.0, id="identity-output-large-shift"),
]


def _relative(t: torch.Tensor, scale: float) -> torch.Tensor:
    return t.double() / scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("activation", "save", "beta"), SATURATION)
def test_gradients_near_saturation_match_float64(backend: str, activation: str, save: str, beta: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8, 8)
    g = torch.randn_like(x)
    # γ ≤ 1: ELU outputs near −1 that do not round to −1 itself (where the inversion would visibly fail).
    weight, bias = torch.tensor([1.0, 0.5, 0.9, 0.8]), torch.full((4,), beta)
    layer = bnlab.nn.BatchNormAct2d(4, activation=activation, negative_slope=0.1, save=save, backend=backend)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    xa = x.clone().requires_grad_()
    layer(xa).backward(g)
    # torch's own float32 sequence, and the same in float64: the yardstick and the rule's reference error.
    xt, wt = x.clone().requires_grad_(), weight.clone().requires_grad_()
    TORCH_ACT[activation](F.batch_norm(xt, None, None, wt, bias, True)).backward(g)
    xd, wd = x.double().requires_grad_(), weight.double().requires_grad_()
    TORCH_ACT[activation](F.batch_norm(xd, None, None, wd, bias.double(), True)).backward(g.double())
    for what, ours, theirs, exact in (("dx", xa.grad, xt.grad, xd.grad), ("dweight", layer.weight.grad, wt.grad,
                                                                           wd.grad)):
        scale = exact.abs().max().item() or 1.0
        assert_as_accurate_as_torch(_relative(ours, scale), _relative(theirs, scale), _relative(exact, scale),
                                    torch.float32, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elu_save_output_keeps_the_input_only_where_outputs_near_minus_one(backend: str) -> None:
    x = torch.randn(8, 3, 6, 6)

    def kept_input(beta: float) -> bool:
        layer = bnlab.nn.BatchNormAct2d(3, activation="elu", save="output", backend=backend)
        with torch.no_grad():
            layer.bias.fill_(beta)
        xi = x.clone().requires_grad_()
        pointers: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: pointers.append(t.data_ptr()) or t, lambda t: t):
            y = layer(xi)
        assert (xi.data_ptr() in pointers) != (y.data_ptr() in pointers), "exactly one of x and y is kept"
        return xi.data_ptr() in pointers

    assert not kept_input(2.0)  # outputs above −1 + 2⁻⁵: y is kept
    assert kept_input(-13.0)  # outputs within 2⁻⁵ of −1: x is kept


def test_the_cpu_kernel_decides_without_reading_a_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    # save="output" needs to know whether y determines x̂: the cpu kernel says so as it writes y, so the training
    # forward reads no tensor back (no .item(), no bool(tensor): on a GPU each would be a synchronisation).
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable here")
    layer = bnlab.nn.BatchNormAct2d(4, activation="elu", save="output", backend="cpu")
    x = torch.randn(8, 4, 6, 6, requires_grad=True)
    layer(x)  # warm up (the library loads)

    def refuse(*args: object) -> None:
        raise AssertionError("a tensor was read back on the host during the forward pass")

    for method in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    y = layer(x)
    monkeypatch.undo()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_the_reference_computes_in_float64_end_to_end(dtype: torch.dtype) -> None:
    # act(BN(x) + r) is computed in float64 and rounded once; the old yardstick rounded BN(x) to the input dtype
    # before adding the residual, and ran its backward in float32.
    x, r = torch.randn(6, 3, 5, 5).to(dtype), torch.randn(6, 3, 5, 5).to(dtype)
    w, b, g = torch.rand(3) + 0.5, torch.randn(3), torch.randn(6, 3, 5, 5).to(dtype)
    reference = get_backend("reference")
    out = reference.forward_train(x, w, b, 1e-5, r, "silu", 0.01)
    exact = ref.forward_train(x.double(), w.double(), b.double(), 1e-5, r.double(), "silu")
    assert torch.equal(out.y, exact.y.to(dtype))
    grads = reference.backward(g, x, out.mean, out.invstd, w, b, r, "silu", 0.01, False, True)
    exact_grads = ref.backward(g.double(), x.double(), exact.mean, exact.invstd, w.double(), b.double(), r.double(),
                               "silu")
    # From the float32-rounded statistics of the contract, the rest in float64: one rounding of dx at the end.
    assert (grads.dx.double() - exact_grads.dx).abs().max() <= 2 * (exact_grads.dx.to(dtype).double()
                                                                    - exact_grads.dx).abs().max() + 1e-3
    assert grads.dresidual is not None and torch.equal(grads.dresidual, exact_grads.dresidual.to(dtype))


def test_auto_never_falls_back_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where no fused kernel runs (here: no compiler, so no cpu backend), save="output" used to run on the float64
    # reference silently; now native composes torch ops.
    from bnlab.kernels import clear_cache
    from bnlab.kernels.cpu import build

    monkeypatch.setattr(build, "_state", {"reason": "no compiler (test)"})
    clear_cache()
    try:
        calls: list[str] = []
        for name in ("native", "reference"):
            backend = get_backend(name)
            original = type(backend).forward_train
            monkeypatch.setattr(type(backend), "forward_train",
                                lambda self, *a, _o=original, **k: calls.append(self.name) or _o(self, *a, **k))
        layer = bnlab.nn.BatchNormAct2d(8, activation="leaky_relu", save="output")
        layer(torch.randn(64, 8, 32, 32))  # 2^19 values: the size auto would have given the cpu kernels
        assert calls == ["native"]
    finally:
        monkeypatch.undo()
        clear_cache()
