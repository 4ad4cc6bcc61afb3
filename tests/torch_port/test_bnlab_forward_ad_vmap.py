"""bnlab's own tests of forward-mode AD, vmap and batched gradients on every backend (issue 9 §3).

PyTorch's ports (test_nn.py, test_modules.py) reach these transforms only through gradcheck's batched gradients
and one forward-AD error test; these tests cover what they leave out: ``torch.autograd.forward_ad`` and
``torch.func.jvp`` through each backend, in training and eval; ``"auto"`` on training inputs large enough that it
switches to the cpu backend (under fixed rules: the committed ones move with each benchmark run); a tangent on
the running statistics alone (ignored, as torch does);
``gradcheck(check_forward_ad=True, check_batched_grad=True)``; ``torch.func.vmap`` after
``torch.func.replace_all_batch_norm_modules_``; and batched gradients. torch's own module, on the same data, is
the oracle. Under these transforms every backend composes torch ops (``bnlab._autograd.under_transform``).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import bnlab
from bnlab.kernels import resolve
from conftest import require
from tolerances import assert_close_to_torch

TRAINING = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
# (bnlab class, torch class, input shape): one per family, small enough for Triton's interpreter.
LAYERS = [
    pytest.param(bnlab.BatchNorm1d, nn.BatchNorm1d, (6, 4), id="1d-NC"),
    pytest.param(bnlab.BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 5), id="2d"),
    pytest.param(bnlab.BatchNorm3d, nn.BatchNorm3d, (2, 3, 2, 3, 4), id="3d"),
]


def _pair(cls: type[nn.Module], torch_cls: type[nn.Module], channels: int, backend: str,
          training: bool, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    theirs = torch_cls(channels).to(dtype).train(training)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
        theirs.running_mean.uniform_(-1, 1)
        theirs.running_var.uniform_(0.5, 2)
    ours = cls(channels, backend=backend).to(dtype).train(training)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _module_jvp(module: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with fwAD.dual_level():
        y = module(fwAD.make_dual(x, t))
        primal, tangent = fwAD.unpack_dual(y)
    assert tangent is not None
    return primal, tangent


@pytest.mark.parametrize(("cls", "torch_cls", "shape"), LAYERS)
@pytest.mark.parametrize("training", TRAINING)
def test_forward_ad_through_a_layer_matches_torch(backend: str, cls: type[nn.Module], torch_cls: type[nn.Module],
                                                  shape: tuple[int, ...], training: bool) -> None:
    ours, theirs = _pair(cls, torch_cls, shape[1], backend, training)
    x, t = torch.randn(shape), torch.randn(shape)
    y, ty = _module_jvp(ours, x, t)
    y_ref, ty_ref = _module_jvp(theirs, x, t)
    assert_close_to_torch(y, y_ref, torch.float32, "primal")
    assert_close_to_torch(ty, ty_ref, torch.float32, "tangent")
    # The running statistics move as in torch (a plain update: the tangent does not reach them).
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert fwAD.unpack_dual(getattr(ours, name)).tangent is None, name
        assert_close_to_torch(getattr(ours, name).double(), getattr(theirs, name).double(), torch.float32, name)


@pytest.mark.parametrize("training", TRAINING)
def test_func_jvp_of_the_functional_form_matches_torch(backend: str, training: bool) -> None:
    # torch.func.jvp with tangents on the input, γ and β at once.
    x, w, b = torch.randn(5, 3, 4), torch.rand(3) + 0.5, torch.randn(3)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    tangents = (torch.randn_like(x), torch.randn_like(w), torch.randn_like(b))

    def ours(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bnlab.functional.batch_norm(x, mean.clone(), var.clone(), w, b, training=training, backend=backend)

    def theirs(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, mean.clone(), var.clone(), w, b, training=training)

    y, ty = torch.func.jvp(ours, (x, w, b), tangents)
    y_ref, ty_ref = torch.func.jvp(theirs, (x, w, b), tangents)
    assert_close_to_torch(y, y_ref, torch.float32, "primal")
    assert_close_to_torch(ty, ty_ref, torch.float32, "tangent")


AUTO_LARGE = [
    pytest.param((64, 4, 32, 32), id="2d-2^18"),  # exactly 2^18 values
    pytest.param((4096, 96), id="1d-NC-393216"),
]


@pytest.mark.usefixtures("known_auto_rules")
@pytest.mark.parametrize("shape", AUTO_LARGE)
def test_auto_on_large_training_inputs_keeps_forward_ad(shape: tuple[int, ...]) -> None:
    # Under the known rules "auto" trains on the cpu backend from 2^18 values (asserted first, so the test says
    # what it tests); the forward-mode derivative must not depend on that choice.
    chosen = resolve("auto", torch.device("cpu"), torch.float32, torch.Size(shape).numel(), True).name
    assert chosen == "cpu", f"'auto' chose {chosen!r} for {shape}; this test is about its switch to 'cpu'"
    cls, torch_cls = (bnlab.BatchNorm2d, nn.BatchNorm2d) if len(shape) == 4 else (bnlab.BatchNorm1d, nn.BatchNorm1d)
    ours, theirs = _pair(cls, torch_cls, shape[1], "auto", True)
    x, t = torch.randn(shape), torch.randn(shape)
    y, ty = _module_jvp(ours, x, t)
    y_ref, ty_ref = _module_jvp(theirs, x, t)
    assert_close_to_torch(y, y_ref, torch.float32, "primal")
    assert_close_to_torch(ty, ty_ref, torch.float32, "tangent")


def test_a_tangent_on_the_running_statistics_alone_is_ignored(backend: str) -> None:
    # Eval mode, tangents on running_mean and running_var but not on the input: torch computes the plain output
    # and gives it no tangent (with an input tangent too it is an error; see test_nn.py's port).
    x, mean, var = torch.randn(4, 3, 5), torch.randn(3), torch.rand(3) + 0.5
    with fwAD.dual_level():
        dual_mean, dual_var = fwAD.make_dual(mean, torch.randn(3)), fwAD.make_dual(var, torch.randn(3))
        y = bnlab.functional.batch_norm(x, dual_mean, dual_var, training=False, backend=backend)
        y_ref = nn.functional.batch_norm(x, dual_mean, dual_var, training=False)
        (primal, tangent), (primal_ref, tangent_ref) = fwAD.unpack_dual(y), fwAD.unpack_dual(y_ref)
    assert tangent_ref is None and tangent is None
    assert_close_to_torch(primal, primal_ref, torch.float32, "output")


@pytest.mark.parametrize("training", TRAINING)
def test_gradcheck_with_forward_ad_and_batched_grad(backend: str, training: bool) -> None:
    # Issue 9 §3: gradcheck(..., check_forward_ad=True, check_batched_grad=True) passes for every backend, in
    # training and in eval (float64: Triton, which has no float64, is covered by the float32 tests above).
    require(backend, torch.float64)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bnlab.functional.batch_norm(x, mean.clone(), var.clone(), w, b, training=training, backend=backend)

    assert torch.autograd.gradcheck(f, (x, w, b), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True, fast_mode=True)


@pytest.mark.parametrize("training", TRAINING)
def test_vmap_after_replace_all_batch_norm_modules(backend: str, training: bool) -> None:
    # The torch.func recipe for batch norm under vmap: replace_all_batch_norm_modules_ stops the running
    # statistics (it finds bnlab's layers, which subclass torch's), then vmap runs one model per sample group.
    ours = nn.Sequential(nn.Conv2d(2, 3, 1), bnlab.BatchNorm2d(3, backend=backend)).train(training)
    theirs = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).train(training)
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        torch.func.replace_all_batch_norm_modules_(model)
    assert ours[1].running_mean is None and not ours[1].track_running_stats
    x = torch.randn(5, 4, 2, 3, 3)  # 5 independent batches of (4, 2, 3, 3)
    assert_close_to_torch(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x), torch.float32, "vmapped output")


def test_per_sample_gradients_with_vmap_of_grad(backend: str) -> None:
    # torch.func's per-sample-gradient recipe through a layer without running statistics.
    ours = bnlab.BatchNorm1d(3, track_running_stats=False, backend=backend)
    theirs = nn.BatchNorm1d(3, track_running_stats=False)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(module: nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, p, (x,)).pow(3).sum()

    x = torch.randn(6, 4, 3)  # 6 groups of a batch of 4
    grads = torch.func.vmap(torch.func.grad(lambda p, x: loss(ours, p, x)), in_dims=(None, 0))(params, x)
    expected = torch.func.vmap(torch.func.grad(lambda p, x: loss(theirs, p, x)), in_dims=(None, 0))(params, x)
    for name in params:
        assert_close_to_torch(grads[name], expected[name], torch.float32, name)


@pytest.mark.parametrize("training", TRAINING)
def test_batched_gradients_of_a_layer(backend: str, training: bool) -> None:
    # autograd.grad(..., is_grads_batched=True) vmaps the backward over a batch of output gradients, as
    # jacobian() and hessian() do: the backward of a normal forward, run with a batched grad_y.
    ours, theirs = _pair(bnlab.BatchNorm2d, nn.BatchNorm2d, 3, backend, training)
    x = torch.randn(2, 3, 4, 4)
    grads = torch.randn(7, *x.shape)  # 7 output gradients at once
    results = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = module(xi)
        results.append(torch.autograd.grad(y, (xi, module.weight), grads, is_grads_batched=True))
    for what, a, b in zip(("input", "weight"), *results, strict=True):
        assert_close_to_torch(a, b, torch.float32, f"batched {what} gradients")


@pytest.mark.parametrize("training", TRAINING)
def test_forward_ad_through_a_fused_layer_matches_torch(backend: str, training: bool) -> None:
    # BatchNormAct2d (act(BN(x) + residual)) against torch's BatchNorm2d, add and ReLU, tangents on x and r.
    ours, theirs = _pair(bnlab.nn.BatchNormAct2d, nn.BatchNorm2d, 3, backend, training)
    x, r = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    tx, tr = torch.randn_like(x), torch.randn_like(r)
    with fwAD.dual_level():
        y = ours(fwAD.make_dual(x, tx), fwAD.make_dual(r, tr))
        y_ref = torch.relu(theirs(fwAD.make_dual(x, tx)) + fwAD.make_dual(r, tr))
        (y, ty), (y_ref, ty_ref) = fwAD.unpack_dual(y), fwAD.unpack_dual(y_ref)
    assert_close_to_torch(y, y_ref, torch.float32, "primal")
    assert_close_to_torch(ty, ty_ref, torch.float32, "tangent")


@pytest.mark.usefixtures("known_auto_rules")
def test_vmap_through_the_default_layer_at_2_18_values_per_call() -> None:
    # Issue 14, from the user's side: vmap through the default ("auto") layer failed from 2^18 values, where
    # "auto" trains on the cpu backend (under the known rules); each of the 2 vmapped calls sees (64, 4, 32, 32)
    # = 2^18 values.
    ours = bnlab.BatchNorm2d(4, track_running_stats=False)
    theirs = nn.BatchNorm2d(4, track_running_stats=False)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 4, 32, 32)
    assert_close_to_torch(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x), torch.float32, "vmapped output")
