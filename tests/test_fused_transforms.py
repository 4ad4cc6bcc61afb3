"""The fused op (``batch_norm_act``: residual, activation, ``save=``) under PyTorch's transforms, on every backend.

Forward-mode AD (``torch.autograd.forward_ad``), ``torch.func.jvp``, ``vmap``, gradcheck's forward-AD and batched
checks, and batched gradients of a normal forward (``is_grads_batched=True``, whose backward runs under vmap).
The oracle is PyTorch's unfused sequence (``F.batch_norm``, ``+ r``, the activation) in float64; bnlab at float32
may be at most twice as far from it as the same sequence at float32 (``tolerances.assert_as_accurate_as_torch``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import bnlab
from bnlab import _autograd
from bnlab.kernels import composed, get_backend
from bnlab.reference.fused import INVERTIBLE, activate
from conftest import require
from tolerances import assert_as_accurate_as_torch

TRAINING = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
SAVES = [pytest.param("input", id="save-input"), pytest.param("output", id="save-output")]
# Every activation with save="input"; save="output" with those it can invert (bnlab refuses the others).
ACTIVATION_SAVE = [pytest.param(a, s, id=f"{a}-save-{s}") for a in ("identity", "relu", "leaky_relu", "silu", "elu")
                   for s in ("input", "output") if s == "input" or a in INVERTIBLE]
SHAPE = (4, 3, 3, 5)


def _data(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    # Positive γ away from 0, so that save="output" really starts from y where it can.
    return {"x": torch.randn(SHAPE, dtype=dtype), "r": torch.randn(SHAPE, dtype=dtype),
            "w": torch.rand(3, dtype=dtype) + 0.5, "b": torch.randn(3, dtype=dtype) * 0.3,
            "mean": torch.randn(3, dtype=dtype) * 0.2, "var": torch.rand(3, dtype=dtype) + 0.5}


def _ours(backend: str, training: bool, activation: str, save: str,
          data: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    def f(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bnlab.functional.batch_norm_act(x, data["mean"].clone(), data["var"].clone(), w, b, training,
                                               residual=r, activation=activation, save=save, backend=backend)
    return f


def _torch_sequence(training: bool, activation: str, data: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    def f(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, data["mean"].clone().to(x.dtype), data["var"].clone().to(x.dtype), w, b, training)
        return activate(y + r, activation, 0.01)
    return f


def _at(data: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in data.items()}


@pytest.mark.parametrize(("activation", "save"), ACTIVATION_SAVE)
@pytest.mark.parametrize("training", TRAINING)
def test_forward_ad_of_the_fused_op_matches_the_float64_sequence(backend: str, activation: str, save: str,
                                                                training: bool) -> None:
    # torch.autograd.forward_ad with tangents on x, r, γ and β at once.
    data = _data()
    primals = (data["x"], data["r"], data["w"], data["b"])
    tangents = tuple(torch.randn_like(p) for p in primals)
    results = {}
    for name, dtype in (("ours", torch.float32), ("torch", torch.float32), ("reference", torch.float64)):
        at = _at(data, dtype)
        fn = _ours(backend, training, activation, save, at) if name == "ours" else _torch_sequence(training,
                                                                                                  activation, at)
        with fwAD.dual_level():
            y = fn(*(fwAD.make_dual(p.to(dtype), t.to(dtype)) for p, t in zip(primals, tangents, strict=True)))
            results[name] = fwAD.unpack_dual(y)
    for part, what in ((0, "primal"), (1, "tangent")):
        assert_as_accurate_as_torch(results["ours"][part], results["torch"][part], results["reference"][part],
                                    torch.float32, what)


@pytest.mark.parametrize("activation", [pytest.param("leaky_relu", id="leaky_relu"), pytest.param("elu", id="elu")])
@pytest.mark.parametrize("training", TRAINING)
def test_gradcheck_of_the_fused_op_with_forward_ad_and_batched_grads(backend: str, activation: str,
                                                                     training: bool) -> None:
    # float64 gradcheck: reverse, forward-mode, batched reverse and batched forward derivatives of act(BN(x) + r)
    # with save="output", against finite differences.
    require(backend, torch.float64)
    data = _data()
    inputs = tuple(data[k].clone().requires_grad_() for k in ("x", "r", "w", "b"))
    assert torch.autograd.gradcheck(_ours(backend, training, activation, "output", data), inputs,
                                    check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True, fast_mode=True)


@pytest.mark.parametrize("training", TRAINING)
def test_func_jvp_and_vmap_of_a_fused_layer(backend: str, training: bool) -> None:
    # torch.func.jvp of BatchNormAct2d's functional form, and vmap of the layer after
    # replace_all_batch_norm_modules_ (5 independent batches), against torch's sequence.
    data = _at(_data(), torch.float32)
    ours, theirs = _ours(backend, training, "elu", "input", data), _torch_sequence(training, "elu", data)
    primals = (data["x"], data["r"], data["w"], data["b"])
    tangents = tuple(torch.randn_like(p) for p in primals)
    (y, ty), (y_ref, ty_ref) = torch.func.jvp(ours, primals, tangents), torch.func.jvp(theirs, primals, tangents)
    exact = torch.func.jvp(_torch_sequence(training, "elu", _at(data, torch.float64)),
                           tuple(p.double() for p in primals), tuple(t.double() for t in tangents))
    assert_as_accurate_as_torch(y, y_ref, exact[0], torch.float32, "jvp primal")
    assert_as_accurate_as_torch(ty, ty_ref, exact[1], torch.float32, "jvp tangent")

    layer = bnlab.nn.BatchNormAct2d(3, activation="elu", backend=backend).train(training)
    torch.func.replace_all_batch_norm_modules_(layer)
    xs, rs = torch.randn(5, *SHAPE), torch.randn(5, *SHAPE)
    got = torch.func.vmap(layer)(xs, rs)
    # Without running statistics (replace_all_batch_norm_modules_) each batch normalizes with its own, in eval too.
    seq, seq64 = _torch_sequence(True, "elu", data), _torch_sequence(True, "elu", _at(data, torch.float64))
    weight, bias = layer.weight.detach(), layer.bias.detach()
    expected = torch.stack([seq(x, r, weight, bias) for x, r in zip(xs, rs, strict=True)])
    exact = torch.stack([seq64(x.double(), r.double(), weight.double(), bias.double())
                         for x, r in zip(xs, rs, strict=True)])
    assert_as_accurate_as_torch(got, expected, exact, torch.float32, "vmapped output")


@pytest.mark.parametrize("save", SAVES)
def test_batched_gradients_of_a_fused_layer(backend: str, save: str) -> None:
    # autograd.grad(..., is_grads_batched=True) after a normal (backend) forward: the backward runs under vmap, with
    # x or y saved, and must give each of the 7 output gradients' input, residual and γ gradients.
    data = _at(_data(), torch.float32)
    layer = bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", save=save, backend=backend)
    with torch.no_grad():
        layer.weight.copy_(data["w"])
        layer.bias.copy_(data["b"])
    x, r = data["x"].clone().requires_grad_(), data["r"].clone().requires_grad_()
    grads = torch.randn(7, *SHAPE)
    got = torch.autograd.grad(layer(x, r), (x, r, layer.weight), grads, is_grads_batched=True)
    theirs, exact = (_sequence_grads(data, grads, dtype) for dtype in (torch.float32, torch.float64))
    for what, ours, t, ref in zip(("input", "residual", "weight"), got, theirs, exact, strict=True):
        assert_as_accurate_as_torch(ours, t, ref, torch.float32, f"batched {what} gradients")


def _sequence_grads(data: dict[str, torch.Tensor], grads: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    # (x, r, γ) gradients of torch's training sequence at dtype, one output gradient at a time, stacked.
    leaves = [data[k].detach().to(dtype).requires_grad_() for k in ("x", "r", "w", "b")]
    y = _torch_sequence(True, "leaky_relu", _at(data, dtype))(*leaves)
    per_grad = [torch.autograd.grad(y, leaves[:3], g.to(dtype), retain_graph=True) for g in grads]
    return [torch.stack(parts) for parts in zip(*per_grad, strict=True)]


def test_a_normal_call_runs_the_backend_and_a_transformed_one_composes_torch_ops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The transform path must not leak into ordinary calls (the backend's kernels, one dispatch), and must be taken
    # inside a forward-AD level even when the backend could run.
    calls: list[str] = []
    cpu_like = get_backend("reference")
    original_forward, original_composite = type(cpu_like).forward_train, composed.train_for_transforms
    monkeypatch.setattr(type(cpu_like), "forward_train",
                        lambda *a, **k: calls.append("backend") or original_forward(*a, **k))
    monkeypatch.setattr(composed, "train_for_transforms",
                        lambda *a, **k: calls.append("composed") or original_composite(*a, **k))
    x = torch.randn(SHAPE)
    assert not _autograd.under_transform()
    bnlab.functional.batch_norm_act(x, None, None, training=True, backend="reference")
    assert calls == ["backend"]
    with fwAD.dual_level():
        assert _autograd.under_transform()
        bnlab.functional.batch_norm_act(fwAD.make_dual(x, torch.ones_like(x)), None, None, training=True,
                                        backend="reference")
    assert calls == ["backend", "composed"]
    assert not _autograd.under_transform()


def test_an_empty_batch_under_forward_ad_leaves_the_running_statistics_alone(backend: str) -> None:
    # As torch: an empty output with an empty tangent, and statistics unchanged (no 0/0 warning on the way).
    layer = bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", backend=backend)
    x, r = torch.randn(0, 3, 2, 2), torch.randn(0, 3, 2, 2)
    with warnings.catch_warnings(), fwAD.dual_level():
        warnings.simplefilter("error", UserWarning)
        y = layer(fwAD.make_dual(x, torch.randn_like(x)), r)
        primal, tangent = fwAD.unpack_dual(y)
    assert primal.shape == tangent.shape == x.shape
    assert torch.equal(layer.running_mean, torch.zeros(3)) and torch.equal(layer.running_var, torch.ones(3))
