"""Port of PyTorch's test/test_modules.py (class TestModule), over the BatchNorm entries of torch's module_db.

torch's ``module_db`` (``torch/testing/_internal/common_modules.py``, shipped with torch 2.13) describes each
module by its constructor and forward inputs (``module_inputs_torch_nn_BatchNorm1d`` and the 2d/3d ones: affine,
3-d input, cumulative average, not affine, not tracking, zero batch, no bias) and its expected errors. Each test
below is TestModule's test of the same name, run on those inputs with bnlab's class in place of torch's, for every
backend (``backend`` fixture), in training and eval, in float32 and float64. module_db has no entry for the lazy
classes, so each entry also yields its lazy form (``LazyBatchNorm2d`` built from the same arguments less
``num_features``), as torch's lazy convolution entries do.

Where torch's entries carry no reference function (the batch-norm ones do not), ``test_forward`` also compares
with torch's own module built the same way: the drop-in's oracle.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any
from unittest.mock import call, patch

import hypothesis
import pytest
import torch
from torch import nn
from torch._subclasses.meta_utils import assert_metadata_eq
from torch.testing._internal.common_modules import ModuleErrorEnum, ModuleInfo, module_db
from torch.testing._internal.common_utils import gradcheck, gradgradcheck, mock_wrapper
from torch.utils._pytree import tree_flatten

import bnlab
from bnlab.kernels import get_backend
from conftest import require
from tolerances import assert_close_to_torch
from torch_port.common import (
    BNLAB_OF,
    LAZY_OF,
    TORCH_LAZY_OF,
    assert_same_state,
)

# torch's test helpers load their own hypothesis profile on import; give the rest of the suite the default back.
hypothesis.settings.load_profile("default")


@dataclass(frozen=True)
class Subject:
    """One module under test: a module_db entry, in its own form or its lazy form."""

    info: ModuleInfo
    lazy: bool

    def _args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args[1:] if self.lazy else args  # the lazy form infers num_features, the first argument

    def build(self, backend: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
        cls = (LAZY_OF if self.lazy else BNLAB_OF)[self.info.module_cls]
        return cls(*self._args(args), **kwargs, backend=backend)

    def oracle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
        cls = TORCH_LAZY_OF[self.info.module_cls] if self.lazy else self.info.module_cls
        return cls(*self._args(args), **kwargs)

    def inputs(self, dtype: torch.dtype, requires_grad: bool, training: bool, device: str | None = "cpu") -> Any:
        return self.info.module_inputs_func(self.info, device=device, dtype=dtype, requires_grad=requires_grad,
                                            training=training)


INFOS = [info for info in module_db if info.module_cls in BNLAB_OF]
assert len(INFOS) == 3, "torch's module_db should hold BatchNorm1d, 2d and 3d"
SUBJECTS = [pytest.param(Subject(info, lazy), id=("Lazy" if lazy else "") + info.module_cls.__name__)
            for lazy in (False, True) for info in INFOS]
# Once it has seen a batch a lazy layer *is* bnlab's layer: the numeric tests (gradients, formats, strides)
# run on the plain classes only, the construction, conversion and first-call tests on both forms.
PLAIN_SUBJECTS = [s for s in SUBJECTS if not s.values[0].lazy]
TRAINING = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
DTYPE_VALUES = (torch.float32, torch.float64)


def _forward_inputs(subject: Subject, dtype: torch.dtype, requires_grad: bool, training: bool) -> Iterator[Any]:
    for module_input in subject.inputs(dtype, requires_grad, training):
        if module_input.forward_input is not None:
            yield module_input


def _materialize(subject: Subject, module: nn.Module, args: tuple[Any, ...]) -> None:
    # TestModule: "Lazy modules need to see an input to initialize params" before their parameters are read.
    if subject.lazy:
        with torch.no_grad():
            module(*args)


def _assert_params_and_buffers_are(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> None:
    # TestModule._assert_module_parameters_and_buffer_are
    device = torch.device(device)
    for kind, items in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, item in items:
            assert item.device == device, f"{kind} {name} is on {item.device}, expected {device}"
            if item.dtype.is_floating_point:
                assert item.dtype == dtype, f"{kind} {name} is {item.dtype}, expected {dtype}"


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward(backend: str, subject: Subject, training: bool, dtype: torch.dtype) -> None:
    # TestModule.test_forward, and torch's module as the oracle (the batch-norm entries have no reference_fn).
    require(backend, dtype)
    for module_input in _forward_inputs(subject, dtype, False, training):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        m = subject.build(backend, c_args, c_kwargs).to(dtype).train(training)
        theirs = subject.oracle(c_args, c_kwargs).to(dtype).train(training)
        out = m(*args, **kwargs)
        assert_close_to_torch(out, theirs(*args, **kwargs), dtype, module_input.desc or "default")
        assert_same_state(m, theirs, dtype)
        # "Use the method call and verify the parameters and buffers"
        m.float() if dtype == torch.float32 else m.double()
        m(*args, **kwargs)
        _assert_params_and_buffers_are(m, "cpu", dtype)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_factory_kwargs(subject: Subject, dtype: torch.dtype) -> None:
    # TestModule.test_factory_kwargs: device and dtype reach every parameter and buffer the constructor creates
    # (the lazy form passes them to its uninitialized parameters and buffers). The backend plays no part here.
    for module_input in subject.inputs(dtype, False, True):
        args, kwargs = module_input.constructor_input.args, dict(module_input.constructor_input.kwargs)
        kwargs.update(device="cpu", dtype=dtype)
        if subject.lazy:
            param_new = mock_wrapper(nn.UninitializedParameter.__new__)
            buffer_new = mock_wrapper(nn.UninitializedBuffer.__new__)
            with patch.object(nn.UninitializedParameter, "__new__", param_new), \
                    patch.object(nn.UninitializedBuffer, "__new__", buffer_new):
                subject.build("auto", args, kwargs)
            for mock in (param_new.mock, buffer_new.mock):
                mock.assert_has_calls([call(device="cpu", dtype=dtype) for _ in mock.mock_calls])
        else:
            _assert_params_and_buffers_are(subject.build("auto", args, kwargs), "cpu", dtype)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_multiple_device_transfer(subject: Subject) -> None:
    # TestModule.test_multiple_device_transfer is @onlyCUDA: forward on the GPU, .cpu(), forward, .cuda(), forward.
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the test moves a module between CPU and GPU")
    for backend, training, dtype in product(bnlab.available_backends("cuda"), (True, False), DTYPE_VALUES):
        for module_input in _forward_inputs(subject, dtype, False, training):
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            args = module_input.forward_input.args
            m = subject.build(backend, c_args, c_kwargs).to("cuda").to(dtype).train(training)
            m(*(a.cuda() for a in args))
            _assert_params_and_buffers_are(m, "cuda:0", dtype)
            m.cpu()
            m(*args)
            _assert_params_and_buffers_are(m, "cpu", dtype)
            m.cuda()
            m(*(a.cuda() for a in args))
            _assert_params_and_buffers_are(m, "cuda:0", dtype)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
def test_repr(backend: str, subject: Subject, training: bool) -> None:
    # TestModule.test_repr: repr and str do not raise; bnlab adds that they name the backend.
    for module_input in subject.inputs(torch.float32, False, training):
        m = subject.build(backend, module_input.constructor_input.args, module_input.constructor_input.kwargs)
        m.train(training)
        assert f"backend={backend!r}" in repr(m) and str(m) == repr(m)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle(backend: str, subject: Subject, training: bool, dtype: torch.dtype) -> None:
    # TestModule.test_pickle: torch.save / torch.load of the module gives one that computes the same output.
    require(backend, dtype)
    for module_input in _forward_inputs(subject, dtype, False, training):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        args = module_input.forward_input.args
        m = subject.build(backend, c_args, c_kwargs).to(dtype).train(training)
        output = m(*args)
        buffer = io.BytesIO()
        torch.save(m, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)  # a whole module, not a state_dict
        assert type(copied) is type(m) and copied.backend == backend
        torch.testing.assert_close(copied(*args), output)


def _make_non_contiguous(obj: Any) -> Any:
    # TestModule.test_non_contiguous_tensors: every other element of a tensor twice as long in the last dimension.
    if isinstance(obj, tuple):
        return tuple(_make_non_contiguous(o) for o in obj)
    if not isinstance(obj, torch.Tensor) or obj.dim() == 0:
        return obj
    out = torch.repeat_interleave(obj, 2, dim=-1)[..., ::2].detach()
    out.requires_grad = obj.requires_grad
    return out


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_tensors(backend: str, subject: Subject, training: bool, dtype: torch.dtype) -> None:
    # TestModule.test_non_contiguous_tensors: outputs and gradients do not depend on the inputs' strides.
    require(backend, dtype)
    for module_input in _forward_inputs(subject, dtype, True, training):
        (x,) = module_input.forward_input.args
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = subject.build(backend, c_args, c_kwargs).to(dtype).train(training)
        default_output = m(x)
        grad_output = default_output.clone().detach_().normal_()
        default_output.backward(grad_output, retain_graph=True)
        default_input_grad = copy.deepcopy(x.grad)
        default_param_grad = copy.deepcopy([p.grad for p in m.parameters()])
        nc_x, nc_grad = _make_non_contiguous(x), _make_non_contiguous(grad_output)
        for inp, g_out in product((x, nc_x), (grad_output, nc_grad)):
            inp.grad = None
            for p in m.parameters():
                p.grad = None
            out = m(inp)
            out.backward(g_out.clone(), retain_graph=True)
            torch.testing.assert_close(out, default_output)
            torch.testing.assert_close(inp.grad, default_input_grad, atol=1e-4, rtol=0)
            torch.testing.assert_close([p.grad for p in m.parameters()], default_param_grad)


def _check_gradients(backend: str, subject: Subject, training: bool, check: Callable[..., bool]) -> None:
    # TestModule._test_gradients_helper: the total derivative, then each parameter's partial derivative alone.
    for module_input in _forward_inputs(subject, torch.float64, True, training):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        input_args = module_input.forward_input.args
        m = subject.build(backend, c_args, c_kwargs).to(torch.float64).train(training)
        _materialize(subject, m, input_args)
        params = tuple(m.parameters())

        def fn(*flat: torch.Tensor, m: nn.Module = m, n_inputs: int = len(input_args)) -> torch.Tensor:
            return m(*flat[:n_inputs])

        assert check(fn, input_args + params)
        for p in params:
            p.requires_grad = False
        for p in params:
            p.requires_grad = True
            assert check(fn, input_args + params)
            p.requires_grad = False


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
def test_grad(backend: str, subject: Subject, training: bool) -> None:
    # TestModule.test_grad (float64 only): torch's testing gradcheck, which also checks batched gradients.
    require(backend, torch.float64)
    _check_gradients(backend, subject, training, gradcheck)


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
def test_gradgrad(backend: str, subject: Subject, training: bool) -> None:
    # TestModule.test_gradgrad (float64 only; the batch-norm entries support gradgrad): torch's gradgradcheck.
    require(backend, torch.float64)
    _check_gradients(backend, subject, training, gradgradcheck)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_cpu_gpu_parity(subject: Subject) -> None:
    # TestModule.test_cpu_gpu_parity is @onlyCUDA: the same module on CPU and GPU, forward and 5 backwards.
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the test compares a module on the CPU and on the GPU")
    for backend, training, dtype in product(bnlab.available_backends("cuda"), (True, False), DTYPE_VALUES):
        for module_input in _forward_inputs(subject, dtype, True, training):
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            (x,) = module_input.forward_input.args
            x_gpu = x.detach().cuda().requires_grad_()
            cpu_m = subject.build("auto", c_args, c_kwargs).to(dtype).train(training)
            gpu_m = subject.build(backend, c_args, c_kwargs).to(dtype).cuda().train(training)
            out_cpu, out_gpu = cpu_m(x), gpu_m(x_gpu)
            tol = {"atol": 0, "rtol": 5e-2 if dtype == torch.float32 else 4e-4}
            torch.testing.assert_close(out_gpu.cpu(), out_cpu, **tol)
            for _ in range(5):
                g = out_cpu.detach().clone().normal_()
                out_cpu.backward(g, retain_graph=True)
                out_gpu.backward(g.cuda(), retain_graph=True)
                torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, **tol)


def _memory_formats(dim: int) -> tuple[list[torch.memory_format], list[torch.memory_format]]:
    # TestModule.test_memory_format's _get_mem_formats: (input formats, module formats) for an input rank.
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(dim)
    if last is None:
        return [torch.contiguous_format], [torch.preserve_format, torch.contiguous_format]
    return [torch.contiguous_format, last], [torch.preserve_format, torch.contiguous_format, last]


def _to_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    if (fmt == torch.channels_last and x.dim() != 4) or (fmt == torch.channels_last_3d and x.dim() != 5):
        return x.clone().detach().requires_grad_(x.requires_grad)
    return x.clone().to(memory_format=fmt).detach().requires_grad_(x.requires_grad)


def _assert_output_format(t: torch.Tensor, input_format: torch.memory_format) -> None:
    # The batch-norm entries have module_memformat_affects_out=False: only the input's format carries over.
    if t.dim() == 4 and input_format == torch.channels_last:
        assert t.is_contiguous(memory_format=torch.channels_last)
    elif t.dim() == 5 and input_format == torch.channels_last_3d:
        assert t.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert t.is_contiguous()


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_format(backend: str, subject: Subject, training: bool, dtype: torch.dtype) -> None:
    # TestModule.test_memory_format: every (input format, module format) pair gives the contiguous result, in the
    # input's format, and so do the gradients in training (an empty channels_last batch keeps its strides).
    require(backend, dtype)
    for module_input in _forward_inputs(subject, dtype, True, training):
        (x,) = module_input.forward_input.args
        input_formats, module_formats = _memory_formats(x.dim())
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = subject.build(backend, c_args, c_kwargs).to(dtype).train(training)
        desired = m(x)
        params = tuple(m.parameters())
        if training:
            ref_grad_out = torch.rand_like(desired)
            ref_grads = torch.autograd.grad(desired, (x, *params), ref_grad_out)
        for input_format in input_formats:
            xf = _to_format(x, input_format)
            for module_format in module_formats:
                m.to(memory_format=module_format)
                out = m(xf)
                torch.testing.assert_close(out, desired)
                _assert_output_format(out, input_format)
                if training:
                    grads = torch.autograd.grad(out, (xf, *tuple(m.parameters())),
                                                torch.empty_like(out).copy_(ref_grad_out))
                    torch.testing.assert_close(grads, ref_grads)
                    _assert_output_format(grads[0], input_format)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_if_train_and_eval_modes_differ(backend: str, subject: Subject) -> None:
    # TestModule.test_if_train_and_eval_modes_differ: a forward without the ``training`` attribute fails on it,
    # which is only right for an entry declaring train_and_eval_differ=True (the batch-norm entries do).
    for module_input in _forward_inputs(subject, torch.float32, False, True):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = subject.build(backend, c_args, c_kwargs)
        _materialize(subject, m, module_input.forward_input.args)
        delattr(m, "training")
        with pytest.raises(AttributeError, match="'training'"):
            m(*module_input.forward_input.args)
        assert subject.info.train_and_eval_differ


def _assert_equal(a: Any, b: Any, msg: str | None = None) -> None:
    # TestCase.assertEqual as assert_metadata_eq uses it: tensors within tolerance, anything else equal.
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=msg)
    else:
        assert a == b, msg or f"{a!r} != {b!r}"


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_ctx_init(subject: Subject, training: bool, dtype: torch.dtype) -> None:
    # TestModule.test_device_ctx_init: built under ``with torch.device("meta")``, every parameter and buffer has
    # the metadata (shape, dtype, strides, requires_grad) of the CPU module's, on the meta device.
    module_inputs = subject.inputs(dtype, False, training)
    with torch.device("meta"):
        meta_inputs = subject.inputs(dtype, False, training, device=None)
    for module_input, meta_input in zip(module_inputs, meta_inputs, strict=True):
        cpu_m = subject.build("auto", module_input.constructor_input.args, module_input.constructor_input.kwargs)
        with torch.device("meta"):
            meta_m = subject.build("auto", meta_input.constructor_input.args, meta_input.constructor_input.kwargs)
        pairs = [*zip(meta_m.parameters(), cpu_m.parameters(), strict=True),
                 *zip(meta_m.buffers(), cpu_m.buffers(), strict=True)]
        for p_meta, p_cpu in pairs:
            if torch.nn.parameter.is_lazy(p_meta):
                continue
            assert p_meta.is_meta
            assert_metadata_eq(_assert_equal, p_meta, p_cpu)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
def test_errors(backend: str, subject: Subject, training: bool) -> None:
    # TestModule.test_errors over module_error_inputs_torch_nn_BatchNorm1d_2d_3d (eps = -1 and eps = 0). Those
    # entries expect "eps must be positive", which is what torch says in training; in eval torch itself says
    # "eps must be non-negative" for -1 and accepts 0, so there torch's module is the oracle.
    errors = subject.info.module_error_inputs_func(subject.info, device="cpu", dtype=torch.float32,
                                                   requires_grad=False, training=training)
    assert errors
    for error_input in errors:
        module_input = error_input.module_error_input
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                subject.build(backend, c_args, c_kwargs)
            continue
        m = subject.build(backend, c_args, c_kwargs).train(training)
        args = module_input.forward_input.args
        if training:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                m(*args)
            continue
        theirs = subject.oracle(c_args, c_kwargs).train(training)
        try:
            expected = theirs(*args)
        except Exception as err:
            with pytest.raises(type(err), match=re.escape(str(err))):
                m(*args)
        else:
            assert_close_to_torch(m(*args), expected, torch.float32, "eval output")


@pytest.fixture
def swap_on_conversion(request: pytest.FixtureRequest) -> Iterator[bool]:
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(request.param)
    yield request.param
    torch.__future__.set_swap_module_params_on_conversion(previous)


SWAP = [pytest.param(True, id="swap"), pytest.param(False, id="no-swap")]


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("swap_on_conversion", SWAP, indirect=True)
@pytest.mark.parametrize("set_grad", [pytest.param(True, id="grad"), pytest.param(False, id="no-grad")])
def test_to(backend: str, subject: Subject, training: bool, swap_on_conversion: bool, set_grad: bool) -> None:
    # TestModule.test_to: .to(dtype) keeps parameters as the same Parameter objects; with swap on, their data
    # (and grads) are swapped in place of .data assignments; a swapped module still runs forward and backward.
    dtypes = [d for d in DTYPE_VALUES if get_backend(backend).unavailable_reason(torch.device("cpu"), d) is None]
    for module_input in _forward_inputs(subject, torch.float32, False, training):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        (x,) = module_input.forward_input.args
        m = subject.build(backend, c_args, c_kwargs).train(training)
        if set_grad:
            for p in m.parameters():
                p.grad = torch.randn_like(p)
        if swap_on_conversion and not set_grad and list(m.parameters()):
            m(x).sum().backward()
            m.to(dtype=torch.half)
            m.to(dtype=torch.float32)
        for dtype in dtypes:
            ids_before = [id(p) for p in m.parameters()]
            cdatas_before = [p._cdata for p in m.parameters()]
            m.to(dtype=dtype)
            assert all(isinstance(p, nn.Parameter) and p.dtype == dtype for p in m.parameters())
            assert [id(p) for p in m.parameters()] == ids_before
            cdatas_after = [p._cdata for p in m.parameters()]
            if swap_on_conversion:  # the Parameter's C++ tensor was swapped in
                assert all(a != b for a, b in zip(cdatas_before, cdatas_after, strict=True))
            else:  # .data was assigned: the same C++ tensor
                assert cdatas_after == cdatas_before
            if set_grad:
                assert all(p.grad is not None and p.grad.dtype == dtype for p in m.parameters())
            assert m(x.to(dtype)).dtype == dtype


@pytest.mark.parametrize("subject", PLAIN_SUBJECTS)
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("swap_on_conversion", SWAP, indirect=True)
def test_to_empty(subject: Subject, training: bool, swap_on_conversion: bool) -> None:
    # TestModule.test_to_empty: a module built on the meta device moves to the CPU with to_empty(), its
    # parameters staying Parameters of the right device and dtype (the same objects when swapping).
    with torch.device("meta"):
        module_inputs = subject.inputs(torch.float32, False, training, device=None)
    for module_input in module_inputs:
        with torch.device("meta"):
            m = subject.build("auto", module_input.constructor_input.args, module_input.constructor_input.kwargs)
        ids_before = [id(p) for p in m.parameters()]
        m.to_empty(device="cpu")
        assert all(isinstance(p, nn.Parameter) and p.device.type == "cpu" and p.dtype == torch.float32
                   for p in m.parameters())
        assert all(b.device.type == "cpu" for b in m.buffers())
        if swap_on_conversion:
            assert [id(p) for p in m.parameters()] == ids_before
        flat, _ = tree_flatten(list(m.state_dict().values()))
        assert not any(t.is_meta for t in flat)
