"""Port of PyTorch's test/test_nn.py: its batch-norm tests (classes TestNN, TestNNDeviceType, TestFusionEval).

Each test keeps the name of the one it ports and runs its body with bnlab's classes (or
``bnlab.functional.batch_norm``) on every backend of the ``backend`` fixture. ``self.assertEqual`` becomes
``torch.testing.assert_close``, which has the same default tolerances. Tests that torch runs on CUDA only but whose
point holds on any device (a huge batch, half inputs with float parameters) run here on the CPU; tests of cuDNN,
of CUDA-only kernels (``batch_norm_backward_elemt``, ``batch_norm_gather_stats``) and of
``torch.batch_norm_update_stats`` (an op bnlab does not have) are not ported. Sizes made for GPUs are scaled down
where the property tested survives (the half-overflow test keeps more than 65504 values per channel).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from copy import deepcopy
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn import Parameter
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_weights
from torch.testing._internal.common_utils import gradcheck, gradgradcheck

import bnlab
from conftest import require
from tolerances import FLOOR, max_error


def _batch_norm(backend: str):  # type: ignore[no-untyped-def]
    return partial(bnlab.functional.batch_norm, backend=backend)


# --------------------------------------------------------------------------------------------------- TestNN

def test_batchnorm_raises_error_if_less_than_one_value_per_channel(backend: str) -> None:
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        bnlab.BatchNorm1d(10, backend=backend)(x)


@pytest.mark.parametrize("size", [9, 11])
def test_batchnorm_raises_error_if_running_mean_is_not_same_size_as_input(backend: str, size: int) -> None:
    with pytest.raises(RuntimeError):
        _batch_norm(backend)(torch.rand(2, 10), torch.rand(size), torch.rand(10))


@pytest.mark.parametrize("size", [9, 11])
def test_batchnorm_raises_error_if_running_var_is_not_same_size_as_input(backend: str, size: int) -> None:
    with pytest.raises(RuntimeError):
        _batch_norm(backend)(torch.rand(2, 10), torch.rand(10), torch.rand(size))


@pytest.mark.parametrize("size", [9, 11])
def test_batchnorm_raises_error_if_weight_is_not_same_size_as_input(backend: str, size: int) -> None:
    with pytest.raises(RuntimeError):
        _batch_norm(backend)(torch.rand(2, 10), torch.rand(10), torch.rand(10), weight=Parameter(torch.rand(size)))


@pytest.mark.parametrize("size", [9, 11])
def test_batchnorm_raises_error_if_bias_is_not_same_size_as_input(backend: str, size: int) -> None:
    with pytest.raises(RuntimeError):
        _batch_norm(backend)(torch.rand(2, 10), torch.rand(10), torch.rand(10), bias=Parameter(torch.rand(size)))


@pytest.mark.parametrize("dual_indices", [(0,), (1,), (1, 2), (0, 1), (0, 1, 2)],
                         ids=["input", "mean", "mean-var", "input-mean", "all"])
def test_batchnorm_raises_error_if_running_var_or_running_mean_have_forward_grad(
        backend: str, dual_indices: tuple[int, ...]) -> None:
    # A tangent on the running statistics is an error only together with one on the input; alone it is ignored.
    args = (torch.randn(3, 2, 5), torch.randn(2), torch.randn(2))
    fn = partial(bnlab.functional.batch_norm, training=False, momentum=-1.2, backend=backend)
    tangents = tuple(torch.rand_like(x) for x in args)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) if i in dual_indices else p
                 for i, (p, t) in enumerate(zip(args, tangents, strict=True))]
        if (1 in dual_indices or 2 in dual_indices) and 0 in dual_indices:
            with pytest.raises(RuntimeError, match="batch_norm is not differentiable wrt running_mean and running_var"):
                fn(*duals)
        else:
            fn(*duals)


def test_batchnorm_buffer_update_when_stats_are_not_tracked(backend: str) -> None:
    # Buffers exist but track_running_stats was switched off afterwards: they normalize nothing and move not.
    bn = bnlab.BatchNorm1d(4, track_running_stats=True, backend=backend)
    bn.track_running_stats = False
    before = [bn.num_batches_tracked.clone(), bn.running_mean.clone(), bn.running_var.clone()]
    bn(torch.rand(32, 4))
    assert all(torch.equal(b, a) for b, a in zip(before, [bn.num_batches_tracked, bn.running_mean, bn.running_var],
                                                  strict=True))


NHWC_CASES = [
    pytest.param(bnlab.BatchNorm2d, torch.channels_last, [(4, 8, 10, 10), (4, 1, 9, 9), (4, 9, 1, 1)], id="2d"),
    pytest.param(bnlab.BatchNorm3d, torch.channels_last_3d, [(4, 8, 2, 10, 10), (4, 1, 2, 9, 9), (4, 9, 1, 1, 1)],
                 id="3d"),
]
LOW_AND_FULL = [pytest.param(torch.float32, id="float32"), pytest.param(torch.bfloat16, id="bfloat16"),
                pytest.param(torch.float16, id="float16")]


def _nhwc_run(cls: type[nn.Module], x: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
              param_dtype: torch.dtype, **kwargs: str) -> list[torch.Tensor]:
    """output, γ's, β's and x's gradient of one layer of ``cls`` with ``state``, on ``x`` as stored."""
    bn = cls(x.shape[1], **kwargs).to(param_dtype)
    bn.load_state_dict(state)
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    out = bn(x)
    out.backward(grad)
    assert out.is_contiguous(memory_format=suggested_format(x))
    return [out.detach(), bn.weight.grad, bn.bias.grad, x.grad]


def suggested_format(x: torch.Tensor) -> torch.memory_format:
    for fmt in (torch.channels_last, torch.channels_last_3d):
        if x.dim() == (4 if fmt == torch.channels_last else 5) and x.is_contiguous(memory_format=fmt) \
                and not x.is_contiguous():
            return fmt
    return torch.contiguous_format


@pytest.mark.parametrize(("cls", "fmt", "shapes"), NHWC_CASES)
@pytest.mark.parametrize("dtype", LOW_AND_FULL)
def test_batchnorm_nhwc_cpu(backend: str, cls: type[nn.Module], fmt: torch.memory_format,
                            shapes: list[tuple[int, ...]], dtype: torch.dtype) -> None:
    # channels_last input (NC11 and N1HW included), also with float parameters for low-precision input, gives
    # the contiguous result in channels_last, and the same gradients. torch compares γ's gradient with its
    # default tolerance, which its own CPU kernels miss now and then (7 draws in 120 for float16 3-d here): the
    # bound is earned instead, twice torch's own channels_last-vs-contiguous difference on the same data.
    require(backend, dtype)
    theirs_cls = {bnlab.BatchNorm2d: nn.BatchNorm2d, bnlab.BatchNorm3d: nn.BatchNorm3d}[cls]
    for shape, mixed in itertools.product(shapes, [False, True] if dtype != torch.float32 else [False]):
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
        grad = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
        layer = cls(shape[1]).to(dtype)
        layer.weight.data.uniform_()
        layer.bias.data.uniform_()
        state, param_dtype = layer.state_dict(), torch.float32 if mixed else dtype
        ours = [_nhwc_run(cls, x, grad, state, param_dtype, backend=backend),
                _nhwc_run(cls, x.contiguous(), grad.contiguous(), state, param_dtype, backend=backend)]
        theirs = [_nhwc_run(theirs_cls, x, grad, state, param_dtype),
                  _nhwc_run(theirs_cls, x.contiguous(), grad.contiguous(), state, param_dtype)]
        torch.testing.assert_close(ours[0][0], ours[1][0])  # the output, as torch checks it
        for what, a, b, ta, tb in zip(("weight grad", "bias grad", "input grad"), ours[0][1:], ours[1][1:],
                                      theirs[0][1:], theirs[1][1:], strict=True):
            scale = max(1.0, tb.double().abs().max().item())
            bound = 2 * max_error(ta, tb) + FLOOR[a.dtype] * scale
            assert max_error(a, b) <= bound, f"{what}: {max_error(a, b):.3g} > {bound:.3g} ({shape}, {mixed=})"


HALF_OVERFLOW_CASES = [
    pytest.param(bnlab.BatchNorm2d, (4, 2, 128, 128), [torch.contiguous_format, torch.channels_last], id="2d"),
    pytest.param(bnlab.BatchNorm3d, (4, 2, 8, 64, 32), [torch.contiguous_format, torch.channels_last_3d], id="3d"),
]


@pytest.mark.parametrize(("cls", "shape", "formats"), HALF_OVERFLOW_CASES)
@pytest.mark.parametrize("param_dtype", [pytest.param(torch.half, id="half-params"),
                                         pytest.param(torch.float, id="float-params")])
def test_batchnorm_half_overflow(backend: str, cls: type[nn.Module], shape: tuple[int, ...],
                                 formats: list[torch.memory_format], param_dtype: torch.dtype) -> None:
    # Half input whose per-channel sums pass half's largest value (65504: here 65536 values per channel): no inf
    # or NaN, and the float module's result; with float parameters the gradients too, in every format pairing.
    require(backend, torch.half)
    if backend == "triton":
        pytest.skip("half a million values per call are too slow for Triton's CPU interpreter")
    for fwd_format, bwd_format in itertools.product(formats, formats):
        x = torch.randn(shape, dtype=torch.half).contiguous(memory_format=fwd_format).requires_grad_()
        bn = cls(shape[1], backend=backend).to(param_dtype)
        out = bn(x)
        ref_x = x.detach().clone().requires_grad_()
        ref_bn = cls(shape[1], backend=backend).float()
        ref_bn.load_state_dict(bn.float().state_dict())
        ref_out = ref_bn(ref_x)
        assert not out.isinf().any() and not out.isnan().any()
        torch.testing.assert_close(out, ref_out, atol=1e-3, rtol=1e-3, check_dtype=False)
        if param_dtype != torch.half:
            grad = torch.empty(shape).uniform_(0, 1).to(torch.half).contiguous(memory_format=bwd_format)
            out.backward(grad)
            ref_out.backward(grad.clone())
            assert not x.grad.isinf().any() and not x.grad.isnan().any()
            torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-3, rtol=1e-3, check_dtype=False)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bfloat16"),
                                   pytest.param(torch.float16, id="float16")])
def test_batchnorm_non_contig_cpu(backend: str, dtype: torch.dtype) -> None:
    # The BatchNorm2d subtest (SyncBatchNorm is not bnlab's yet): a permuted, non-contiguous input in eval gives
    # a channels_last output equal to the contiguous one; low-precision input with float parameters too.
    require(backend, dtype)
    x = torch.arange(6, dtype=torch.float).reshape(1, 3, 2, 1).permute(0, 2, 1, 3)
    bn = bnlab.BatchNorm2d(2, backend=backend).float().eval()
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    ref_bn = nn.BatchNorm2d(2).float().eval()
    ref_bn.load_state_dict(bn.state_dict())
    out, ref_out = bn(x), ref_bn(x.contiguous())
    assert out.is_contiguous(memory_format=torch.channels_last) and ref_out.is_contiguous()
    torch.testing.assert_close(out, ref_out)
    x_low = torch.arange(24, dtype=dtype).reshape(1, 3, 2, 4).permute(0, 2, 1, 3)
    bn_mix = bnlab.BatchNorm2d(2, backend=backend).float().eval()
    ref_bn_f = deepcopy(bn_mix)
    torch.testing.assert_close(ref_bn_f(x_low.float()), bn_mix(x_low).float(), atol=0.05, rtol=0.05)


def test_batchnorm_load_state_dict() -> None:
    bn = bnlab.BatchNorm2d(3)
    assert bn.state_dict()["num_batches_tracked"] == torch.tensor(0)
    bn.num_batches_tracked = torch.tensor(10)
    assert bn.state_dict()["num_batches_tracked"] == torch.tensor(10)
    bn.load_state_dict(OrderedDict(), strict=False)
    assert bn.state_dict()["num_batches_tracked"] == torch.tensor(10)
    # num_batches_tracked missing from the loaded state_dict: a meta counter is still replaced by a real 0.
    with torch.device("meta"):
        meta_bn = bnlab.BatchNorm2d(3)
    assert meta_bn.num_batches_tracked.device == torch.device("meta")
    meta_bn.load_state_dict(OrderedDict(), assign=True, strict=False)
    assert meta_bn.state_dict()["num_batches_tracked"] == torch.tensor(0)


def test_convert_sync_batchnorm() -> None:
    # torch runs this on CUDA; the conversion itself needs no device. bnlab's layers become torch's
    # SyncBatchNorm with the same state (bnlab's own SyncBatchNorm comes with its issue).
    module = nn.Sequential(bnlab.BatchNorm1d(100), nn.InstanceNorm1d(100))
    comp_module = nn.Sequential(bnlab.BatchNorm1d(100), nn.InstanceNorm1d(100))
    comp_module.load_state_dict(module.state_dict())
    sync_bn_module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    children = list(sync_bn_module.children())
    assert children[0].__class__ is nn.SyncBatchNorm
    assert children[1].__class__ is nn.InstanceNorm1d
    for layer, converted in zip(comp_module.children(), sync_bn_module.children(), strict=True):
        for key, value in layer.state_dict().items():
            assert value.device == converted.state_dict()[key].device
            torch.testing.assert_close(converted.state_dict()[key], value)


def test_fuse_conv_bn_requires_grad() -> None:
    conv, bn = nn.Conv2d(3, 3, 3), bnlab.BatchNorm2d(3)
    for w_rg, b_rg in itertools.product([True, False], [True, False]):
        conv.weight.requires_grad, conv.bias.requires_grad = w_rg, b_rg
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        assert weight.requires_grad == w_rg and bias.requires_grad == b_rg


def test_fuse_linear_bn_requires_grad() -> None:
    linear, bn = nn.Linear(3, 3), bnlab.BatchNorm1d(3)
    for w_rg, b_rg in itertools.product([True, False], [True, False]):
        linear.weight.requires_grad, linear.bias.requires_grad = w_rg, b_rg
        weight, bias = fuse_linear_bn_weights(linear.weight, linear.bias, bn.running_mean, bn.running_var, bn.eps,
                                              bn.weight, bn.bias)
        assert weight.requires_grad == w_rg and bias.requires_grad == b_rg


# TestFusionEval.test_fuse_module_eval_numerics draws X (5, 3, 5, 5) and running statistics of 6 channels with
# hypothesis; these are hand-picked draws: ordinary, large offsets, and tiny variances.
FUSION_STATS = [
    pytest.param(0.0, 1.0, id="ordinary"),
    pytest.param(50.0, 4.0, id="large-mean"),
    pytest.param(-0.5, 1e-3, id="tiny-variance"),
]


@pytest.mark.parametrize(("mean_offset", "var_scale"), FUSION_STATS)
def test_fuse_module_eval_numerics(backend: str, mean_offset: float, var_scale: float) -> None:
    require(backend, torch.float64)
    inputs = torch.randn(5, 3, 5, 5, dtype=torch.float64)
    running_mean = torch.randn(6, dtype=torch.float64) + mean_offset
    running_var = (torch.rand(6, dtype=torch.float64) + 0.1) * var_scale
    conv_ref = nn.Conv2d(3, 6, bias=True, kernel_size=(3, 3)).double().eval()
    for affine in (True, False):  # "Conv+BN" and "Conv+BN(non-affine)"
        bn_ref = bnlab.BatchNorm2d(6, affine=affine, backend=backend).double().eval()
        bn_ref.running_mean, bn_ref.running_var = running_mean.clone(), running_var.clone()
        y_ref = bn_ref(conv_ref(inputs))
        what = "Conv+BN" if affine else "Conv+BN(non-affine)"
        torch.testing.assert_close(fuse_conv_bn_eval(conv_ref, bn_ref)(inputs), y_ref,
                                   msg=lambda m, what=what: f"{what} fusion results are off: {m}")


# ------------------------------------------------------------------------------------------ TestNNDeviceType

def test_BatchNorm_empty(backend: str) -> None:
    # _test_module_empty_input: an empty batch gives an empty output and zero gradients, statistics unchanged.
    # The layer stays float32 and the batch is float64, as in torch's test.
    require(backend, torch.float64)
    mod = bnlab.BatchNorm2d(3, backend=backend)
    inp = torch.randn(0, 3, 2, 2, dtype=torch.float64).requires_grad_()
    out = mod(inp)
    out.backward(torch.rand_like(out))
    assert out.size() == inp.size()
    torch.testing.assert_close(inp.grad, torch.zeros_like(inp))
    torch.testing.assert_close(mod.running_mean, torch.tensor([0.0, 0, 0]))
    torch.testing.assert_close(mod.running_var, torch.tensor([1.0, 1, 1]))
    torch.testing.assert_close(mod.weight.grad, torch.tensor([0.0, 0, 0]))
    torch.testing.assert_close(mod.bias.grad, torch.tensor([0.0, 0, 0]))


@pytest.mark.parametrize("training", [pytest.param(False, id="eval"), pytest.param(True, id="train")])
def test_batchnorm_grad(backend: str, training: bool) -> None:
    # _test_batchnorm_grad: gradcheck and gradgradcheck (torch's testing versions, batched gradients included)
    # of the functional form on arange data, with a zero running variance in channel 0.
    require(backend, torch.float64)
    bs, n_feat, size_feat = 4, 5, 6
    dtype = torch.float64
    x = torch.arange(bs * n_feat * size_feat, requires_grad=True, dtype=dtype).view(bs, n_feat, size_feat)
    weight = torch.arange(1, n_feat + 1, requires_grad=True, dtype=dtype)
    bias = torch.arange(n_feat, requires_grad=True, dtype=dtype)
    running_mean = 1 - torch.arange(n_feat, dtype=dtype)
    running_var = 2 * torch.arange(n_feat, dtype=dtype)
    args = (x, running_mean, running_var, weight, bias, training, 0.1, 0.0001)
    fn = _batch_norm(backend)
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


def _batchnorm_eval(backend: str, ndim: int, dtype: torch.dtype, module_dtype: torch.dtype | None = None) -> None:
    # _test_batchnorm_eval: in eval two passes agree; a layer without running statistics computes the same in
    # training and in eval.
    module_dtype = module_dtype or dtype
    module = bnlab.BatchNorm1d(3, backend=backend).to(module_dtype).eval()
    data = torch.rand([3] * ndim, dtype=dtype, requires_grad=True)
    grad = torch.rand([3] * ndim, dtype=dtype)
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    torch.testing.assert_close(res1, res2)
    torch.testing.assert_close(grad1, data.grad)
    module = bnlab.BatchNorm1d(3, track_running_stats=False, backend=backend).to(module_dtype)
    data = torch.rand(4, 3, dtype=dtype, requires_grad=True)
    grad = torch.rand(4, 3, dtype=dtype)
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    module.eval()
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    torch.testing.assert_close(res1, res2)
    torch.testing.assert_close(grad1, data.grad)


def _batchnorm_affine(backend: str, ndim: int, dtype: torch.dtype, module_dtype: torch.dtype | None = None) -> None:
    # _test_batchnorm_affine: affine with γ = 1, β = 0 equals no affine, forward and backward.
    module_dtype = module_dtype or dtype
    module = bnlab.BatchNorm1d(3, affine=False, backend=backend).to(module_dtype)
    module_affine = bnlab.BatchNorm1d(3, affine=True, backend=backend).to(module_dtype)
    with torch.no_grad():
        module_affine.weight.fill_(1.0)
        module_affine.bias.zero_()
    data = torch.rand([3] * ndim, dtype=dtype, requires_grad=True)
    grad = torch.ones_like(data, requires_grad=False)
    res1 = module_affine(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    torch.testing.assert_close(res1, res2)
    torch.testing.assert_close(grad1, data.grad)


def _batchnorm_simple_average(backend: str, dtype: torch.dtype, module_dtype: torch.dtype | None = None) -> None:
    # _test_batchnorm_simple_average: momentum=None averages the batches seen since the last reset, equally.
    module_dtype = module_dtype or dtype
    module = bnlab.BatchNorm1d(3, momentum=None, backend=backend).to(module_dtype)
    zeros, ones = torch.zeros(3, dtype=module_dtype), torch.ones(3, dtype=module_dtype)
    torch.testing.assert_close(module.running_mean, zeros)
    torch.testing.assert_close(module.running_var, ones)
    data1, data2 = torch.rand(4, 3, dtype=dtype), torch.rand(4, 3, dtype=dtype)
    res1 = module(data1)
    running_mean1, running_var1 = module.running_mean.clone(), module.running_var.clone()
    assert not torch.equal(running_mean1, zeros) and not torch.equal(running_var1, ones)
    module.reset_running_stats()
    torch.testing.assert_close(module.running_mean, zeros)
    torch.testing.assert_close(module.running_var, ones)
    res2 = module(data2)
    running_mean2, running_var2 = module.running_mean.clone(), module.running_var.clone()
    assert not torch.equal(running_mean2, zeros) and not torch.equal(running_var2, ones)
    module.reset_running_stats()
    res3, res4 = module(data1), module(data2)
    torch.testing.assert_close(res3, res1)
    torch.testing.assert_close(res4, res2)
    torch.testing.assert_close(module.running_mean, (running_mean1 + running_mean2) / 2)
    torch.testing.assert_close(module.running_var, (running_var1 + running_var2) / 2)


def test_batchnorm_eval(backend: str) -> None:
    _batchnorm_eval(backend, 2, torch.float)
    _batchnorm_eval(backend, 3, torch.float)


def test_batchnorm_affine(backend: str) -> None:
    _batchnorm_affine(backend, 2, torch.float)
    _batchnorm_affine(backend, 3, torch.float)


def test_batchnorm_simple_average(backend: str) -> None:
    _batchnorm_simple_average(backend, torch.float)


LOW = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.half, id="float16")]


# torch runs the three *_mixed tests (low-precision input, float module) on CUDA only; its CPU kernels take the
# same mix (test_batchnorm_nhwc_cpu), so bnlab's layers must too.
@pytest.mark.parametrize("dtype", LOW)
def test_batchnorm_eval_mixed(backend: str, dtype: torch.dtype) -> None:
    require(backend, dtype)
    _batchnorm_eval(backend, 2, dtype, torch.float)
    _batchnorm_eval(backend, 3, dtype, torch.float)


@pytest.mark.parametrize("dtype", LOW)
def test_batchnorm_affine_mixed(backend: str, dtype: torch.dtype) -> None:
    require(backend, dtype)
    _batchnorm_affine(backend, 2, dtype, torch.float)
    _batchnorm_affine(backend, 3, dtype, torch.float)


@pytest.mark.parametrize("dtype", LOW)
def test_batchnorm_simple_average_mixed(backend: str, dtype: torch.dtype) -> None:
    require(backend, dtype)
    _batchnorm_simple_average(backend, dtype, torch.float)


def test_batchnorm_nonaffine_cuda_half_input(backend: str) -> None:
    # Run on the CPU: half input, a non-affine module kept in float32; the output is half in train and eval.
    require(backend, torch.half)
    x = torch.randn(16, 3, 24, 24, dtype=torch.half)
    m = bnlab.BatchNorm2d(3, affine=False, backend=backend).float()
    assert m(x).dtype == torch.half
    m.eval()
    assert m(x).dtype == torch.half


def test_batchnorm_large_batch(backend: str) -> None:
    # torch's @onlyCUDA test of 880801 values in one channel (a grid limit there); on the CPU it checks that a
    # long reduction runs forward and backward and normalizes.
    if backend == "triton":
        pytest.skip("880801 values per call are too slow for Triton's CPU interpreter")
    bn = bnlab.BatchNorm2d(1, backend=backend)
    data = torch.rand(880801, 1, 1, 1, requires_grad=True)
    out = bn(data)
    out.sum().backward()
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(correction=0), torch.tensor(1.0), atol=1e-3, rtol=0)
