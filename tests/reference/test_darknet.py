"""bnlab.reference.darknet, the port of darknet's CPU batch-norm layer: each function against its formula written
out here in float64, the step functions against Algorithm 1 once darknet's quirks are replaced by the paper's, the
layer's rolling statistics and accumulated updates, the measured gradient gap (scripts/darknet_gradient_gap.py),
and (where ``BNLAB_DARKNET_LIB`` names a libdarknet.so built from darknet's sources) the real C functions."""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

from bnlab.reference import algorithm1 as a1
from bnlab.reference import darknet as dk
from tolerances import ATOL, RTOL

F64 = torch.float64

# (batch, filters, h, w): darknet's layers are images; a 1×1 "image" is a fully connected layer.
LAYERS = [
    pytest.param((2, 3, 1, 1), id="N2-fc"),  # m = 2, the smallest batch darknet's variance accepts
    pytest.param((1, 4, 3, 5), id="N1-spatial"),  # one image: its positions are the samples
    pytest.param((5, 7, 4, 3), id="odd-sizes"),
]


def _rand(*shape: int, dtype: torch.dtype = F64, shift: float = 0.0) -> Tensor:
    return torch.randn(*shape, dtype=dtype) + shift


def _nchw(flat: Tensor, b: int, c: int, h: int, w: int) -> Tensor:
    return flat.reshape(b, c, h, w)


def _channels(t: Tensor) -> Tensor:
    """(N, C, H, W) → (C, m): one row of values per channel."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _vec(v: Tensor) -> Tensor:
    return v.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_steps_equal_their_formulas(layer: tuple[int, int, int, int]) -> None:
    b, c, h, w = layer
    s = h * w
    x = _rand(b * c * s, shift=3.0)
    scales, biases = _rand(c), _rand(c)
    per_channel = _channels(_nchw(x, b, c, h, w))
    mean = dk.mean_cpu(x, b, c, s)
    variance = dk.variance_cpu(x, mean, b, c, s)
    torch.testing.assert_close(mean, per_channel.mean(1), rtol=1e-14, atol=0)
    torch.testing.assert_close(variance, per_channel.var(1, correction=1), rtol=1e-12, atol=0)  # 1/(m − 1)
    normalized = dk.normalize_cpu(x, mean, variance, b, c, s)
    expected = (_nchw(x, b, c, h, w) - _vec(mean)) / (_vec(variance).sqrt() + dk.NORMALIZE_EPS)  # ε outside
    torch.testing.assert_close(normalized, expected.flatten(), rtol=1e-14, atol=1e-15)
    y = dk.add_bias(dk.scale_bias(normalized, scales, b, c, s), biases, b, c, s)
    torch.testing.assert_close(y, (expected * _vec(scales) + _vec(biases)).flatten(), rtol=1e-14, atol=1e-14)


def test_constants_are_darknets() -> None:
    # The C literals .000001f, .00001f, .99 and .01 (as float arguments): float32 values, not the decimal ones.
    literals = tuple(float(torch.tensor(v, dtype=torch.float32)) for v in (1e-6, 1e-5, 0.99, 0.01))
    assert literals == (dk.NORMALIZE_EPS, dk.DELTA_EPS, dk.ROLLING_DECAY, dk.ROLLING_WEIGHT)
    assert dk.NORMALIZE_EPS != 1e-6


def test_normalize_puts_eps_outside_the_root_on_a_hand_computed_channel() -> None:
    # One filter, values 1 and 3: μ = 2, unbiased variance 2, so x̂ = ∓1/(√2 + 1e-6).
    x = torch.tensor([1.0, 3.0], dtype=F64)
    mean = dk.mean_cpu(x, 1, 1, 2)
    variance = dk.variance_cpu(x, mean, 1, 1, 2)
    assert (mean.item(), variance.item()) == (2.0, 2.0)
    out = dk.normalize_cpu(x, mean, variance, 1, 1, 2)
    expected = torch.tensor([-1.0, 1.0], dtype=F64) / (2**0.5 + dk.NORMALIZE_EPS)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0)
    assert not torch.allclose(out, expected * (2**0.5 + dk.NORMALIZE_EPS) / (2 + dk.NORMALIZE_EPS) ** 0.5,
                              rtol=1e-9, atol=0)  # ε inside the root would give another value


def _darknet_backward_formula(x: Tensor, dy: Tensor, scales: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """darknet's ∂ℓ/∂x in closed form, (N, C, H, W): (g − ḡ)/√(v + ε) − (x − μ)·Σ g(x − μ) / (m (v + ε)^(3/2))."""
    g = dy * _vec(scales)
    m = x.numel() // x.shape[1]
    centred = x - _vec(mean)
    root = (_vec(variance) + dk.DELTA_EPS).sqrt()
    g_mean = g.sum((0, 2, 3), keepdim=True) / m
    projection = (g * centred).sum((0, 2, 3), keepdim=True)
    return (g - g_mean) / root - centred * projection / (m * root**3)


@pytest.mark.parametrize("layer", LAYERS)
def test_backward_steps_equal_their_formulas(layer: tuple[int, int, int, int]) -> None:
    b, c, h, w = layer
    s = h * w
    x, dy, x_norm = _rand(b * c * s, shift=-2.0), _rand(b * c * s), _rand(b * c * s)
    scales, mean, variance = _rand(c), _rand(c), torch.rand(c, dtype=F64) + 0.5
    dy4, x4 = _nchw(dy, b, c, h, w), _nchw(x, b, c, h, w)
    bias_updates = dk.backward_bias(torch.ones(c, dtype=F64), dy, b, c, s)
    torch.testing.assert_close(bias_updates, 1.0 + dy4.sum((0, 2, 3)), rtol=1e-13, atol=1e-13)  # accumulates
    scale_updates = dk.backward_scale_cpu(x_norm, dy, b, c, s)
    torch.testing.assert_close(scale_updates, (dy4 * _nchw(x_norm, b, c, h, w)).sum((0, 2, 3)), rtol=1e-13,
                               atol=1e-13)
    torch.testing.assert_close(dk.backward_scale_cpu(x_norm, dy, b, c, s, scale_updates), 2 * scale_updates)
    dxhat = dk.scale_bias(dy, scales, b, c, s)
    mean_delta = dk.mean_delta_cpu(dxhat, variance, b, c, s)
    variance_delta = dk.variance_delta_cpu(x, dxhat, mean, variance, b, c, s)
    root = (variance + dk.DELTA_EPS).sqrt()  # ε inside the root in every backward step
    torch.testing.assert_close(mean_delta, -(dy4 * _vec(scales)).sum((0, 2, 3)) / root, rtol=1e-13, atol=1e-13)
    expected_vd = -0.5 * (dy4 * _vec(scales) * (x4 - _vec(mean))).sum((0, 2, 3)) / root**3
    torch.testing.assert_close(variance_delta, expected_vd, rtol=1e-13, atol=1e-13)
    dx = dk.normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, b, c, s, dxhat)
    m = b * s
    expected_dx = (dxhat.reshape(b, c, h, w) / _vec(root) + _vec(variance_delta) * 2 * (x4 - _vec(mean)) / m
                   + _vec(mean_delta) / m)  # 1/m, not 1/(m − 1), although darknet's variance divides by m − 1
    torch.testing.assert_close(dx, expected_dx.flatten(), rtol=1e-12, atol=1e-12)
    # Together, for any μ and σ²: (g − ḡ)/√(σ² + ε) − (x − μ)·Σ g(x − μ)/(m (σ² + ε)^(3/2)), g = γ·dy.
    torch.testing.assert_close(dx, _darknet_backward_formula(x4, dy4, scales, mean, variance).flatten(),
                               rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("layer", LAYERS)
def test_steps_fed_the_papers_statistics_equal_algorithm1(layer: tuple[int, int, int, int]) -> None:
    # darknet's quirks replaced by the paper's: the biased σ²_B (variance_cpu · (m−1)/m) and the paper's x̂ with
    # ε inside the root. darknet's backward steps already put ε = 1e-5 inside and use 1/m, so they then compute
    # Algorithm 1's backward exactly.
    b, c, h, w = layer
    s, m = h * w, b * h * w
    x4, dy4, gamma = _rand(b, c, h, w, shift=1.5), _rand(b, c, h, w), _rand(c)
    x, dy = x4.flatten(), dy4.flatten()
    mean = dk.mean_cpu(x, b, c, s)
    biased = dk.variance_cpu(x, mean, b, c, s) * (m - 1) / m
    x_norm = a1.forward_train(x4, eps=dk.DELTA_EPS).xhat.flatten()
    bias_updates = dk.backward_bias(torch.zeros(c, dtype=F64), dy, b, c, s)
    scale_updates = dk.backward_scale_cpu(x_norm, dy, b, c, s)
    dxhat = dk.scale_bias(dy, gamma, b, c, s)
    mean_delta = dk.mean_delta_cpu(dxhat, biased, b, c, s)
    variance_delta = dk.variance_delta_cpu(x, dxhat, mean, biased, b, c, s)
    dx = dk.normalize_delta_cpu(x, mean, biased, mean_delta, variance_delta, b, c, s, dxhat)
    for name, reference in (("paper", a1.backward_paper(dy4, x4, gamma, eps=dk.DELTA_EPS)),
                            ("darknet-named", a1.backward_darknet(dy4, x4, gamma, eps=dk.DELTA_EPS))):
        torch.testing.assert_close(dx, reference.dx.flatten(), rtol=1e-10, atol=1e-12, msg=f"{name}: dx")
        torch.testing.assert_close(scale_updates, reference.dgamma, rtol=1e-12, atol=1e-12, msg=f"{name}: dγ")
        torch.testing.assert_close(bias_updates, reference.dbeta, rtol=1e-12, atol=1e-12, msg=f"{name}: dβ")


def test_make_batchnorm_layer_starts_as_darknet_does() -> None:
    l = dk.make_batchnorm_layer(3, 5, 4, 2)  # noqa: E741 (darknet's name)
    assert (l.batch, l.w, l.h, l.c, l.spatial, l.outputs) == (3, 5, 4, 2, 20, 40)
    assert l.scales.tolist() == [1.0, 1.0] and l.biases.tolist() == [0.0, 0.0]
    for name in ("rolling_mean", "rolling_variance", "mean", "variance", "scale_updates", "bias_updates"):
        assert getattr(l, name).tolist() == [0.0, 0.0], name  # the rolling variance starts at 0, not 1
    assert l.x.shape == l.x_norm.shape == (120,) and l.x.dtype == torch.float32


def test_forward_layer_rolls_statistics_from_zero_and_normalizes_with_the_unbiased_variance() -> None:
    b, c, h, w = 4, 3, 2, 2
    l = dk.make_batchnorm_layer(b, w, h, c, dtype=F64)  # noqa: E741
    l.scales, l.biases = _rand(c), _rand(c)
    expected_mean, expected_var = torch.zeros(c, dtype=F64), torch.zeros(c, dtype=F64)
    for step in range(3):
        x = _rand(b * c * h * w, shift=float(step))
        y = dk.forward_batchnorm_layer(l, x, train=True)
        per_channel = _channels(_nchw(x, b, c, h, w))
        mu, unbiased = per_channel.mean(1), per_channel.var(1, correction=1)
        expected_mean = dk.ROLLING_DECAY * expected_mean + dk.ROLLING_WEIGHT * mu
        expected_var = dk.ROLLING_DECAY * expected_var + dk.ROLLING_WEIGHT * unbiased
        torch.testing.assert_close(l.rolling_mean, expected_mean, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(l.rolling_variance, expected_var, rtol=1e-13, atol=1e-15)
        x_hat = (_nchw(x, b, c, h, w) - _vec(mu)) / (_vec(unbiased).sqrt() + dk.NORMALIZE_EPS)
        torch.testing.assert_close(l.x_norm, x_hat.flatten(), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(y, (x_hat * _vec(l.scales) + _vec(l.biases)).flatten(), rtol=1e-12, atol=1e-12)
    rolling_before = l.rolling_mean.clone(), l.rolling_variance.clone()
    x = _rand(b * c * h * w)
    y = dk.forward_batchnorm_layer(l, x, train=False)
    x_hat = (_nchw(x, b, c, h, w) - _vec(expected_mean)) / (_vec(expected_var).sqrt() + dk.NORMALIZE_EPS)
    torch.testing.assert_close(y, (x_hat * _vec(l.scales) + _vec(l.biases)).flatten(), rtol=1e-12, atol=1e-12)
    assert torch.equal(l.rolling_mean, rolling_before[0]) and torch.equal(l.rolling_variance, rolling_before[1])


def test_backward_layer_accumulates_updates_and_returns_darknets_gradient() -> None:
    b, c, h, w = 3, 2, 3, 3
    l = dk.make_batchnorm_layer(b, w, h, c, dtype=F64)  # noqa: E741
    l.scales = _rand(c)
    x, dy = _rand(b * c * h * w, shift=0.5), _rand(b * c * h * w)
    dk.forward_batchnorm_layer(l, x, train=True)
    dx = dk.backward_batchnorm_layer(l, dy, train=True)
    expected = _darknet_backward_formula(_nchw(x, b, c, h, w), _nchw(dy, b, c, h, w), l.scales, l.mean, l.variance)
    torch.testing.assert_close(dx, expected.flatten(), rtol=1e-11, atol=1e-12)
    first_scale, first_bias = l.scale_updates.clone(), l.bias_updates.clone()
    torch.testing.assert_close(first_bias, _nchw(dy, b, c, h, w).sum((0, 2, 3)))
    dk.backward_batchnorm_layer(l, dy, train=True)
    torch.testing.assert_close(l.scale_updates, 2 * first_scale)  # += until darknet's update step clears them
    torch.testing.assert_close(l.bias_updates, 2 * first_bias)


def test_eval_backward_uses_rolling_statistics_and_the_last_training_x_norm() -> None:
    b, c, h, w = 2, 2, 2, 2
    l = dk.make_batchnorm_layer(b, w, h, c, dtype=F64)  # noqa: E741
    x_train, x_eval, dy = _rand(b * c * h * w), _rand(b * c * h * w, shift=4.0), _rand(b * c * h * w)
    dk.forward_batchnorm_layer(l, x_train, train=True)
    train_x_norm = l.x_norm.clone()
    dk.forward_batchnorm_layer(l, x_eval, train=False)
    dx = dk.backward_batchnorm_layer(l, dy, train=False)
    torch.testing.assert_close(l.scale_updates, (_nchw(dy, b, c, h, w) * _nchw(train_x_norm, b, c, h, w)).sum(
        (0, 2, 3)))  # darknet's stale x_norm: not the eval input's
    # the batch formulas with the rolling statistics, not eval's true gradient γ·dy/(√σ² + 1e-6)
    expected = _darknet_backward_formula(_nchw(x_eval, b, c, h, w), _nchw(dy, b, c, h, w), l.scales,
                                         l.rolling_mean, l.rolling_variance)
    torch.testing.assert_close(dx, expected.flatten(), rtol=1e-10, atol=1e-10)


def _load_gap_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "darknet_gradient_gap.py"
    spec = importlib.util.spec_from_file_location("darknet_gradient_gap", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_true_gradient_of_darknets_forward_has_the_documented_closed_form() -> None:
    # docs/math.md: with v the unbiased variance, s = √v and δ = 1e-6,
    # ∂ℓ/∂x = γ/(s + δ)·(dy − mean(dy)) − γ (x − μ) Σ dy(x − μ) / ((m − 1) s (s + δ)²).
    b, c, h, w = 4, 3, 2, 2
    m = b * h * w
    l = dk.make_batchnorm_layer(b, w, h, c, dtype=F64)  # noqa: E741
    l.scales = _rand(c)
    x, dy = _rand(b * c * h * w).requires_grad_(), _rand(b * c * h * w)
    (auto,) = torch.autograd.grad(dk.forward_batchnorm_layer(l, x, train=True), x, dy)
    x4, dy4 = _nchw(x.detach(), b, c, h, w), _nchw(dy, b, c, h, w)
    centred = x4 - x4.mean((0, 2, 3), keepdim=True)
    s = _vec(_channels(x4).var(1, correction=1).sqrt())
    g = dy4 * _vec(l.scales)
    expected = ((g - g.mean((0, 2, 3), keepdim=True)) / (s + dk.NORMALIZE_EPS)
                - centred * (g * centred).sum((0, 2, 3), keepdim=True) / ((m - 1) * s * (s + dk.NORMALIZE_EPS) ** 2))
    torch.testing.assert_close(auto, expected.flatten(), rtol=1e-10, atol=1e-12)
    # The compact form a kernel would use (docs/compat.md): with r = 1/(s + δ) and x̂ = (x − μ)·r,
    # ∂ℓ/∂x = γ r (dy − Σdy/m − x̂ · Σ(dy·x̂)/m · c), c = m(s + δ)/((m − 1)s); torch's batch norm has c = 1.
    r = 1 / (s + dk.NORMALIZE_EPS)
    x_hat = centred * r
    c_factor = m * (s + dk.NORMALIZE_EPS) / ((m - 1) * s)
    compact = _vec(l.scales) * r * (dy4 - dy4.sum((0, 2, 3), keepdim=True) / m
                                    - x_hat * (dy4 * x_hat).sum((0, 2, 3), keepdim=True) / m * c_factor)
    torch.testing.assert_close(auto, compact.flatten(), rtol=1e-10, atol=1e-12)


def test_gradient_gap_shrinks_with_the_batch_and_grows_as_the_variance_nears_eps() -> None:
    script = _load_gap_script()
    by_name = {case.name: script.gradient_gap(case) for case in script.CASES}
    m8, m64, m2704 = (by_name[n].relative_l2 for n in ("fully connected, batch 8 (m = 8)",
                                                       "fully connected, batch 64 (m = 64)",
                                                       "conv 13x13, batch 16 (m = 2704)"))
    assert m8 > m64 > m2704 > 0
    base, small, tiny = (by_name[n].relative_l2 for n in ("conv 8x8, batch 4 (m = 256)",
                                                          "conv 8x8, batch 4, input std 1e-2",
                                                          "conv 8x8, batch 4, input std 1e-3"))
    assert base < small < tiny
    # m = 2: x̂ = ±1/√2 whatever x, so the true gradient vanishes; darknet's is ~0.35 of the direct term's size.
    assert by_name["fully connected, batch 2 (m = 2)"].relative_to_direct > 0.1


@pytest.mark.parametrize("layer", LAYERS)
def test_float32_port_is_within_float32_rounding_of_float64(layer: tuple[int, int, int, int]) -> None:
    b, c, h, w = layer
    x64, dy64 = _rand(b * c * h * w, shift=1.0), _rand(b * c * h * w)
    outs = {}
    for dtype in (torch.float32, F64):
        l = dk.make_batchnorm_layer(b, w, h, c, dtype=dtype)  # noqa: E741
        y = dk.forward_batchnorm_layer(l, x64.to(dtype), train=True)
        outs[dtype] = (y, dk.backward_batchnorm_layer(l, dy64.to(dtype), train=True), l.rolling_variance)
        assert y.dtype == dtype and outs[dtype][1].dtype == dtype
    for ours, exact in zip(outs[torch.float32], outs[F64], strict=True):
        torch.testing.assert_close(ours.double(), exact, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])


def test_bad_arguments_are_clear_errors() -> None:
    x = torch.zeros(12)
    with pytest.raises(ValueError, match="batch·filters·spatial"):
        dk.mean_cpu(x, 2, 2, 2)
    with pytest.raises(TypeError, match="float32"):
        dk.mean_cpu(x.half(), 2, 2, 3)
    with pytest.raises(ValueError, match="at least 2 values"):
        dk.variance_cpu(torch.zeros(3), torch.zeros(3), 1, 3, 1)
    with pytest.raises(ValueError, match="one per filter"):
        dk.normalize_cpu(x, torch.zeros(2), torch.ones(3), 2, 3, 2)
    l = dk.make_batchnorm_layer(2, 2, 1, 3)  # noqa: E741
    with pytest.raises(TypeError, match="layer holds"):
        dk.forward_batchnorm_layer(l, x.double(), train=True)
    with pytest.raises(ValueError, match="batch·c·h·w"):
        dk.forward_batchnorm_layer(l, torch.zeros(10), train=True)


# --- the real darknet ---------------------------------------------------------------------------------------------

def _darknet_library() -> ctypes.CDLL:
    path = os.environ.get("BNLAB_DARKNET_LIB")
    if not path:
        pytest.skip("no darknet build: set BNLAB_DARKNET_LIB to a libdarknet.so built from darknet's sources "
                    "(make libdarknet.so in a checkout of pjreddie/darknet) to compare the port with the C")
    lib = ctypes.CDLL(path)
    p, i = ctypes.c_void_p, ctypes.c_int
    signatures = {
        "mean_cpu": [p, i, i, i, p], "variance_cpu": [p, p, i, i, i, p], "normalize_cpu": [p, p, p, i, i, i],
        "scale_bias": [p, p, i, i, i], "add_bias": [p, p, i, i, i], "backward_bias": [p, p, i, i, i],
        "backward_scale_cpu": [p, p, i, i, i, p], "mean_delta_cpu": [p, p, i, i, i, p],
        "variance_delta_cpu": [p, p, p, p, i, i, i, p], "normalize_delta_cpu": [p, p, p, p, p, i, i, i, p],
    }
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def _ptr(t: Tensor) -> int:
    assert t.dtype == torch.float32 and t.is_contiguous()
    return t.data_ptr()


@pytest.mark.parametrize("layer", [*LAYERS, pytest.param((8, 16, 13, 13), id="yolo-like")])
def test_port_matches_darknets_c_functions(layer: tuple[int, int, int, int]) -> None:
    lib = _darknet_library()
    b, c, h, w = layer
    s = h * w
    x, dy = _rand(b * c * s, dtype=torch.float32, shift=2.0), _rand(b * c * s, dtype=torch.float32)
    scales, biases = _rand(c, dtype=torch.float32), _rand(c, dtype=torch.float32)

    def c_out(n: int) -> Tensor:
        return torch.full((n,), float("nan"), dtype=torch.float32)

    def check(ours: Tensor, theirs: Tensor, what: str) -> None:
        scale = max(1.0, theirs.abs().max().item())
        torch.testing.assert_close(ours, theirs, rtol=RTOL[torch.float32], atol=ATOL[torch.float32] * scale,
                                   msg=lambda msg: f"{what}: {msg}")

    mean, variance = c_out(c), c_out(c)
    lib.mean_cpu(_ptr(x), b, c, s, _ptr(mean))
    check(dk.mean_cpu(x, b, c, s), mean, "mean_cpu")
    lib.variance_cpu(_ptr(x), _ptr(mean), b, c, s, _ptr(variance))
    check(dk.variance_cpu(x, mean, b, c, s), variance, "variance_cpu")
    x_norm = x.clone()
    lib.normalize_cpu(_ptr(x_norm), _ptr(mean), _ptr(variance), b, c, s)
    check(dk.normalize_cpu(x, mean, variance, b, c, s), x_norm, "normalize_cpu")
    y = x_norm.clone()
    lib.scale_bias(_ptr(y), _ptr(scales), b, c, s)
    check(dk.scale_bias(x_norm, scales, b, c, s), y, "scale_bias")
    ours_y = dk.add_bias(y, biases, b, c, s)
    lib.add_bias(_ptr(y), _ptr(biases), b, c, s)
    check(ours_y, y, "add_bias")

    bias_updates, scale_updates = torch.ones(c), torch.ones(c)
    ours_bias = dk.backward_bias(bias_updates, dy, b, c, s)
    ours_scale = dk.backward_scale_cpu(x_norm, dy, b, c, s, scale_updates)
    lib.backward_bias(_ptr(bias_updates), _ptr(dy), b, c, s)
    lib.backward_scale_cpu(_ptr(x_norm), _ptr(dy), b, c, s, _ptr(scale_updates))
    check(ours_bias, bias_updates, "backward_bias")
    check(ours_scale, scale_updates, "backward_scale_cpu")
    delta = dy.clone()
    lib.scale_bias(_ptr(delta), _ptr(scales), b, c, s)
    mean_delta, variance_delta = c_out(c), c_out(c)
    lib.mean_delta_cpu(_ptr(delta), _ptr(variance), b, c, s, _ptr(mean_delta))
    check(dk.mean_delta_cpu(delta, variance, b, c, s), mean_delta, "mean_delta_cpu")
    lib.variance_delta_cpu(_ptr(x), _ptr(delta), _ptr(mean), _ptr(variance), b, c, s, _ptr(variance_delta))
    check(dk.variance_delta_cpu(x, delta, mean, variance, b, c, s), variance_delta, "variance_delta_cpu")
    ours_dx = dk.normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, b, c, s, delta)
    lib.normalize_delta_cpu(_ptr(x), _ptr(mean), _ptr(variance), _ptr(mean_delta), _ptr(variance_delta), b, c, s,
                            _ptr(delta))
    check(ours_dx, delta, "normalize_delta_cpu")
