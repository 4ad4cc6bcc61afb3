"""PyTorch's own fusion, quantization and conversion tools, taught about bnlab's layers (installed on import).

bnlab's layers subclass torch's, but several torch tools match layers by *exact* type, or trace a model with
``torch.fx``'s default tracer (which traces through any module outside ``torch.nn``), so without this module they
skip bnlab's layers, raise on them, or, worse, fold a ``BatchNormAct`` layer as if it had no activation:

- ``torch.ao.quantization.fuse_modules`` / ``fuse_modules_qat``: looks a fuser method up by the exact types of
  the listed modules. The documented way in is ``fuse_custom_config_dict={"additional_fuser_method_mapping":
  FUSER_METHOD_MAPPING}`` on every call; so that a plain call works too, :func:`install` also adds the same
  entries to torch's default table (``fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD``, the only place
  that call reads; it gains new keys, none of torch's keys changes). A plain bnlab layer is handed to torch's
  fuser as a torch layer sharing its parameters and buffers (torch's intrinsic modules, ``ConvBn2d`` and the
  like, accept exactly torch's classes); a ``BatchNormAct`` layer is refused.
- ``torch.fx.experimental.optimization.fuse``: its patterns are local to the function and matched by exact
  type, so there is nothing to register; :func:`install` puts :func:`fx_fuse` in its place, which hands a model
  without bnlab layers to torch's own ``fuse`` unchanged.
- ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` and
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` accept any batch-norm subclass; they are wrapped so that a
  layer whose output is not plain batch norm (a ``BatchNormAct`` layer, or one switched by
  :func:`bnlab.tools.freeze`) is refused instead of silently losing what it does; every other call goes to
  torch's function as before.
- ``DistributedDataParallel`` refuses a ``SyncBatchNorm`` in a CPU module, torch's being GPU-only; bnlab's runs on
  CPU too, so the check is left to torch for models that hold torch's own class only.

Each wrapper keeps torch's original as ``__wrapped__``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.ao.quantization.fuser_method_mappings as fuser_method_mappings
import torch.fx.experimental.optimization as fx_optimization
import torch.nn.utils.fusion as nn_fusion
from torch import nn

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.ghost import GhostMixin
from bnlab.nn.renorm import RenormMixin
from bnlab.nn.sync import SyncBatchNorm

__all__ = ["FUSER_METHOD_MAPPING", "fx_fuse", "install"]

#: bnlab's plain layers (exactly these classes) and the torch class each one computes like.
TORCH_CLASS_OF: dict[type[nn.Module], type[nn.modules.batchnorm._BatchNorm]] = {
    BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, BatchNorm3d: nn.BatchNorm3d}
#: The fused layers: act(BN(x) + residual), which no torch tool knows how to fold.
ACT_CLASSES: tuple[type[nn.Module], ...] = (BatchNormAct1d, BatchNormAct2d, BatchNormAct3d)


def not_plain_batch_norm(module: nn.Module, *, for_inference: bool) -> str | None:
    """Why a torch tool would change what ``module`` computes if it treated it as plain batch norm, or None.

    ``for_inference``: the tool keeps only the eval-mode map (fusion), so the freeze switches that leave that
    map as it is (normalize with the running statistics, update nothing) are fine.
    """
    convention = getattr(module, "convention", "torch")
    if convention == "darknet":  # its eval map too: (x − r_μ)/(√r_v + ε), which torch's fusers would fold as √(r_v + ε)
        return (f"{type(module).__name__} follows convention='darknet', whose inference divides by √running_var + ε "
                f"(ε outside the root)")
    if isinstance(module, ACT_CLASSES):
        return (f"{type(module).__name__} applies activation={getattr(module, 'activation', '?')!r} "
                f"(and may add a residual) after batch norm")
    if not for_inference:  # in eval mode renorm and ghost batch norm are batch norm; in training they are not
        if isinstance(module, (RenormMixin, GhostMixin)):
            return f"{type(module).__name__} normalizes its training batches otherwise than batch norm"
        if convention != "torch":
            return f"{type(module).__name__} follows convention={convention!r} in training"
    normalize_with, update_stats = getattr(module, "normalize_with", None), getattr(module, "update_stats", None)
    if for_inference and normalize_with != "batch" and not update_stats:
        return None
    if normalize_with is not None or update_stats is not None:
        return (f"bnlab.tools.freeze set {type(module).__name__} to normalize_with={normalize_with!r}, "
                f"update_stats={update_stats!r}")
    return None


def _refusal(tool: str, reason: str) -> NotImplementedError:
    return NotImplementedError(f"{tool} cannot take this layer: {reason}, which it would silently drop; "
                               f"bnlab.fold(model) folds a whole model and knows bnlab's layers")


def _refuse(module: nn.Module, tool: str, for_inference: bool) -> None:
    reason = not_plain_batch_norm(module, for_inference=for_inference)
    if reason is not None:
        raise _refusal(tool, reason)


# --- torch.ao.quantization.fuse_modules ---------------------------------------------------------------------

def _torch_twin(module: nn.Module) -> nn.Module:
    """A torch layer of the same family sharing ``module``'s parameters and buffers (bnlab layers only)."""
    torch_class = TORCH_CLASS_OF.get(type(module))
    if torch_class is None or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module
    # Built on the meta device: every tensor it would allocate is replaced by the bnlab layer's own.
    twin = torch_class(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       device="meta", bias=module.bias is not None)
    for name, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
        setattr(twin, name, tensor)
    return twin.train(module.training)


_FUSE_MODULES = "torch.ao.quantization.fuse_modules"


def _adapt(torch_fuser: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def fuser(is_qat: bool, *modules: nn.Module) -> nn.Module:
        for m in modules:  # eval fusion keeps only the inference map; QAT trains it as torch's layer
            _refuse(m, _FUSE_MODULES, for_inference=not is_qat)
        return torch_fuser(is_qat, *(_torch_twin(m) for m in modules))
    return fuser


def _refusing(is_qat: bool, *modules: nn.Module) -> nn.Module:
    reasons = [r for m in modules if (r := not_plain_batch_norm(m, for_inference=False)) is not None]
    raise _refusal(_FUSE_MODULES, reasons[0])


def _fuser_method_mapping() -> dict[tuple[type[nn.Module], ...], Callable[..., nn.Module]]:
    bnlab_of = {t: b for b, t in TORCH_CLASS_OF.items()}
    act_of = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d, nn.BatchNorm3d: BatchNormAct3d}
    mapping: dict[tuple[type[nn.Module], ...], Callable[..., nn.Module]] = {}
    for key, torch_fuser in fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD.items():
        if any(t in bnlab_of for t in key):
            mapping[tuple(bnlab_of.get(t, t) for t in key)] = _adapt(torch_fuser)  # type: ignore[arg-type]
            mapping[tuple(act_of.get(t, t) for t in key)] = _refusing
    return mapping


#: Fuser methods for bnlab's layers, keyed like torch's table: pass it as
#: ``fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}``.
FUSER_METHOD_MAPPING = _fuser_method_mapping()


# --- torch.fx.experimental.optimization.fuse ----------------------------------------------------------------

class _BnlabLeafTracer(torch.fx.Tracer):
    """torch's default tracer, with bnlab's layers as leaves (``call_module``) like torch's own."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*TORCH_CLASS_OF, *ACT_CLASSES)) or super().is_leaf_module(m, module_qualified_name)


_FX_PATTERNS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
                (nn.Linear, nn.BatchNorm1d))


def _fx_fusable(pattern: tuple[type[nn.Module], type[nn.Module]], node: torch.fx.Node,
                modules: dict[str, nn.Module]) -> bool:
    if fx_optimization.matches_module_pattern(pattern, node, modules):
        return True
    # torch's test, with bnlab's plain layer standing for the torch class it subclasses
    if not (node.op == "call_module" and len(node.args) == 1 and isinstance(node.args[0], torch.fx.Node)):
        return False
    bn, first = modules.get(str(node.target)), node.args[0]
    return (bn is not None and TORCH_CLASS_OF.get(type(bn)) is pattern[1]
            and not_plain_batch_norm(bn, for_inference=True) is None
            and first.op == "call_module" and type(modules.get(str(first.target))) is pattern[0])


def fx_fuse(model: nn.Module, inplace: bool = False, no_trace: bool = False) -> nn.Module:
    """``torch.fx.experimental.optimization.fuse`` (conv/linear + batch norm folded for inference) for models
    with bnlab layers; a model without them goes to torch's own function.

    The same algorithm and patterns as torch's: a (conv, bn) pair is folded when the conv's output feeds only
    the batch norm and the batch norm tracks running statistics. bnlab's plain layers count as the torch class
    they subclass; ``BatchNormAct`` layers and layers that :func:`bnlab.tools.freeze` set to use or update batch
    statistics stay as they are. The model is traced with bnlab's layers as leaves (``no_trace=True`` keeps a
    given ``GraphModule`` as it is). Returns a new ``GraphModule``; ``inplace=False`` (the default) copies
    ``model`` first.
    """
    if not any(isinstance(m, (*TORCH_CLASS_OF, *ACT_CLASSES)) for m in model.modules()):
        return _TORCH_FX_FUSE(model, inplace, no_trace)
    if not inplace:
        model = copy.deepcopy(model)
    if no_trace and isinstance(model, torch.fx.GraphModule):
        fx_model = model
    else:
        tracer = _BnlabLeafTracer()
        graph = tracer.trace(model)
        fx_model = torch.fx.GraphModule(tracer.root, graph)
    modules = dict(fx_model.named_modules())
    new_graph = copy.deepcopy(fx_model.graph)
    for pattern in _FX_PATTERNS:
        for node in new_graph.nodes:
            if not _fx_fusable(pattern, node, modules) or len(node.args[0].users) > 1:
                continue
            first, bn = modules[node.args[0].target], modules[node.target]
            if not bn.track_running_stats:
                continue
            fold = nn_fusion.fuse_linear_bn_eval if pattern[0] is nn.Linear else nn_fusion.fuse_conv_bn_eval
            fx_optimization.replace_node_module(node.args[0], modules, fold(first, bn))
            node.replace_all_uses_with(node.args[0])
            new_graph.erase_node(node)
    return torch.fx.GraphModule(fx_model, new_graph)


_TORCH_FX_FUSE = fx_optimization.fuse


# --- torch.nn.utils.fusion and SyncBatchNorm.convert_sync_batchnorm -----------------------------------------

# The wrappers take torch's name and docstring but keep their own __module__, so a traceback says where they live.
_WRAPPER_ASSIGNED = ("__name__", "__doc__")


def _refusing_wrapper(torch_function: Callable[..., Any], tool: str) -> Callable[..., Any]:
    @functools.wraps(torch_function, assigned=_WRAPPER_ASSIGNED)
    def wrapper(layer: nn.Module, bn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        _refuse(bn, tool, for_inference=True)
        return torch_function(layer, bn, *args, **kwargs)
    return wrapper


def _convert_sync_batchnorm(cls: type, module: nn.Module, process_group: Any = None) -> nn.Module:
    for name, m in module.named_modules():
        reason = not_plain_batch_norm(m, for_inference=False)
        if reason is not None:
            raise NotImplementedError(
                f"torch.nn.SyncBatchNorm.convert_sync_batchnorm cannot take {name or 'the model'!r}: {reason}, "
                f"which torch's SyncBatchNorm would silently drop")
    return _TORCH_CONVERT_SYNC.__func__(cls, module, process_group)  # type: ignore[attr-defined,no-any-return]


_TORCH_CONVERT_SYNC = nn.SyncBatchNorm.convert_sync_batchnorm
functools.update_wrapper(_convert_sync_batchnorm, _TORCH_CONVERT_SYNC.__func__,  # type: ignore[attr-defined]
                         assigned=_WRAPPER_ASSIGNED)


# --- DistributedDataParallel's SyncBatchNorm check ----------------------------------------------------------------
# DDP refuses any torch.nn.SyncBatchNorm (subclasses included) in a CPU module, because torch's runs on GPUs only.
# bnlab's SyncBatchNorm runs on CPU (gloo): the check is left to torch only for models holding torch's own class.
_TORCH_DDP_SYNC_CHECK = torch.nn.parallel.DistributedDataParallel._passing_sync_batchnorm_handle


def _ddp_sync_check(self: Any, module: nn.Module) -> None:
    if any(isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm) for m in module.modules()):
        _TORCH_DDP_SYNC_CHECK(self, module)


def install() -> None:
    """Teach torch's tools about bnlab's layers (see the module docstring); calling it again changes nothing."""
    if getattr(fx_optimization.fuse, "__wrapped__", None) is _TORCH_FX_FUSE:
        return
    fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD.update(FUSER_METHOD_MAPPING)
    fx_fuse.__wrapped__ = _TORCH_FX_FUSE  # type: ignore[attr-defined]
    fx_optimization.fuse = fx_fuse
    for name in ("fuse_conv_bn_eval", "fuse_linear_bn_eval"):
        original = getattr(nn_fusion, name)
        wrapped = _refusing_wrapper(original, f"torch.nn.utils.fusion.{name}")
        setattr(nn_fusion, name, wrapped)
        if getattr(nn.utils, name, None) is original:
            setattr(nn.utils, name, wrapped)
    nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(_convert_sync_batchnorm)  # type: ignore[assignment]
    _ddp_sync_check.__wrapped__ = _TORCH_DDP_SYNC_CHECK  # type: ignore[attr-defined]
    torch.nn.parallel.DistributedDataParallel._passing_sync_batchnorm_handle = _ddp_sync_check  # type: ignore[method-assign]


install()
