"""torch.compile of the one op: fused layers keep their kernels and what save= says, and the backend is not a guard."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from benchmarks.memory import saved_bytes
from torch import nn

import bnlab
from bnlab.kernels import available_backends, get_backend

BACKENDS = available_backends("cpu")


def _spy_forward_train(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    backend = get_backend(name)
    original = type(backend).forward_train
    calls: list[dict[str, Any]] = []

    def spy(self, x, weight, bias, eps, residual=None, activation="identity", negative_slope=0.01,  # type: ignore[no-untyped-def]
            check_output=False):
        calls.append({"activation": activation, "residual": residual is not None, "check_output": check_output})
        return original(self, x, weight, bias, eps, residual, activation, negative_slope, check_output)

    monkeypatch.setattr(type(backend), "forward_train", spy)
    return calls


def _storages(fn: Any, *args: Any) -> tuple[Any, set[int]]:
    pointers: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointers.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, pointers


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in BACKENDS])
@pytest.mark.parametrize("activation", ["leaky_relu", "elu"])
def test_compiled_fused_layer_keeps_its_kernel_and_saves_only_the_output(monkeypatch: pytest.MonkeyPatch,
                                                                          backend: str, activation: str) -> None:
    torch._dynamo.reset()
    calls = _spy_forward_train(monkeypatch, backend)
    layer = bnlab.nn.BatchNormAct2d(16, activation=activation, save="output", backend=backend)
    with torch.no_grad():
        layer.bias.fill_(1.0)  # ELU outputs stay clear of −1 + 2⁻⁵, where y would no longer determine x̂
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    compiled(x).sum().backward()  # traced here, outside the hooks below
    assert calls and all(c["activation"] == activation and c["check_output"] for c in calls), calls
    y, saved = _storages(compiled, x)
    assert y.untyped_storage().data_ptr() in saved, "save='output' keeps y under torch.compile"
    assert x.untyped_storage().data_ptr() not in saved, "... and not x"
    unfused = nn.Sequential(nn.BatchNorm2d(16), nn.LeakyReLU() if activation == "leaky_relu" else nn.ELU())
    assert saved_bytes(compiled, x) <= 0.55 * saved_bytes(unfused, x), "the same saving as in eager mode"


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_save_output_with_zero_gamma_keeps_gradients_exact(backend: str) -> None:
    # γ = 0 in a channel: y does not determine x̂ there, so the compiled call keeps x (an extra output of the op,
    # empty when not needed) and the gradients are those of save="input".
    torch._dynamo.reset()
    layers = {save: bnlab.nn.BatchNormAct2d(4, activation="leaky_relu", save=save, backend=backend)
              for save in ("input", "output")}
    for layer in layers.values():
        layer.weight.data = torch.tensor([1.0, 0.0, -2.0, 0.5])
        layer.bias.data = torch.tensor([0.1, 0.2, -0.3, 0.0])
    x = torch.randn(3, 4, 5, 5)
    grads = {}
    for save, layer in layers.items():
        run = torch.compile(layer, fullgraph=True, backend="aot_eager") if save == "output" else layer
        xi = x.clone().requires_grad_()
        run(xi).backward(torch.ones(3, 4, 5, 5))
        grads[save] = (xi.grad, layer.weight.grad, layer.bias.grad)
    assert grads["output"][1][1] != 0  # dγ of the zero channel is the true Σ dz·x̂
    for a, b in zip(grads["input"], grads["output"], strict=True):
        torch.testing.assert_close(a, b)


def test_modules_differing_only_in_backend_share_one_compiled_graph() -> None:
    # Ten modules, each compiled on its own, that differ only in backend=: the backend reaches the graph as a
    # tensor, not as a guard, so training and eval give two entries in all instead of two per backend name
    # (which with five names exceeded dynamo's recompile limit of 8 and failed under fullgraph=True).
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    names = ["auto", *BACKENDS]
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    for i in range(10):
        module = bnlab.BatchNorm2d(3, backend=names[i % len(names)])
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        y = compiled(x)
        expected = torch.nn.functional.batch_norm(x, None, None, module.weight, module.bias, True)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
        y.sum().backward()
        module.eval()
        torch.testing.assert_close(compiled(x), module(x))
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_a_compiled_graph_honours_the_modules_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # The backend is read when the graph runs: a module on "reference" runs the reference even though another
    # module's compiled code (on "native") is reused.
    torch._dynamo.reset()
    calls = _spy_forward_train(monkeypatch, "reference")
    x = torch.randn(4, 3, 5, 5)
    for name in ("native", "reference"):
        module = bnlab.BatchNorm2d(3, backend=name)
        torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    assert len(calls) == 1
