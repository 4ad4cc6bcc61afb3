"""``bnlab.tools.fold``: fold batch norm into the neighbouring conv or linear layer for inference.

At inference a batch-norm layer is the fixed per-channel map of Algorithm 2, line 11,
y = s·x + t with s = γ/√(Var[x] + ε) and t = β − γE[x]/√(Var[x] + ε), so it can be multiplied into the weights
of the layer next to it and removed:

- BN after a layer W (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear; any groups, dilation, stride, padding mode):
  output channel o becomes s_o·(W_o ∗ x + b_o) + t_o, i.e. W'_o = s_o·W_o and b'_o = s_o·b_o + t_o;
- BN right before a Linear or a Conv without padding: W(s·x + t) + b = (W·s)x + (W t + b); a padded conv
  would see its zero padding shifted by t, so it is left alone.

Two ways to find the pairs:

- ``torch.fx`` (default): the model is traced with every batch-norm layer as a leaf (bnlab's layers included, so
  they appear as ``call_module`` like torch's); graphs traced elsewhere show bnlab's layers as
  ``call_function(_module_forward, (get_attr bn, x))`` and that form is recognised too. A pair is folded only
  when nothing else reads the intermediate value and the layer is called once.
- ``nn.Sequential`` neighbours: the fallback for models torch.fx cannot trace.

Folding uses the running statistics, so the model must be in eval mode; the caller's model is never modified.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from bnlab.nn.batchnorm import _module_forward
from bnlab.reference.algorithm2 import inference_affine
from bnlab.tools._layers import (
    NormLayer,
    batch_norm_layers,
    input_ranks,
    is_batch_norm,
    is_frozen_batch_norm,
    is_uninitialized,
    norm_layers,
)

__all__ = ["FoldFallbackWarning", "Folding", "fold", "fold_with_report"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: The layers batch norm folds into: Conv*d, ConvTranspose*d (both _ConvNd) and Linear.
WeightLayer = _ConvNd | nn.Linear
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
METHODS = ("auto", "fx", "sequential")


class FoldFallbackWarning(UserWarning):
    """torch.fx could not trace the model, so only ``nn.Sequential`` neighbours were folded."""


class Folding(NamedTuple):
    """What :func:`fold_with_report` did: the new model, (bn, layer) pairs folded, (bn, reason) pairs left."""

    model: nn.Module
    folded: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    method: str  # "fx" or "sequential"


def fold(model: nn.Module, *, example_inputs: Tensor | tuple[Any, ...] | None = None,
         method: str = "auto") -> nn.Module:
    """A new eval-mode model with every foldable batch-norm layer folded into its conv/linear neighbour.

    Args:
        model: a model in eval mode (``model.eval()``): folding uses the running statistics.
        example_inputs: optional inputs for one forward pass. A BatchNorm1d next to a Linear is folded only if its
            input is 2-D (N, C): on 3-D input the two layers act on different dimensions. Without examples that
            is assumed, as it holds for ``nn.Sequential(Linear, BatchNorm1d)`` MLPs.
        method: ``"auto"`` (torch.fx, falling back to ``"sequential"`` with a :class:`FoldFallbackWarning`
            naming the part torch.fx could not trace), ``"fx"`` (raise instead) or ``"sequential"``.

    Returns a copy of the model, in eval mode, with each folded layer replaced by its folded copy and each folded
    batch norm by ``nn.Identity``: same class, same forward, same state_dict keys but the batch norms' (a layer
    that had no bias gains one). A GraphModule given (or held inside the model with bnlab layers in it) comes
    back as a GraphModule with the batch norms taken out of its graph. Outputs equal the original's up to float
    rounding: the folded weights are computed in float64 and rounded once.
    """
    return fold_with_report(model, example_inputs=example_inputs, method=method).model


def fold_with_report(model: nn.Module, *, example_inputs: Tensor | tuple[Any, ...] | None = None,
                     method: str = "auto") -> Folding:
    """:func:`fold`, also saying which layers were folded and why the others were not."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expects a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    training = [f"layer {name!r}" if name else "the model"
                for name, m in [("", model), *batch_norm_layers(model)] if m.training]
    if training:
        raise ValueError(
            f"fold needs a model in eval mode, but {training[0]} is in training mode: folding bakes the running "
            f"statistics into the weights, and in training mode batch norm uses batch statistics instead; "
            f"call model.eval() first"
        )
    root = copy.deepcopy(model)
    ranks = _record_input_ranks(root, example_inputs)
    if method == "sequential":
        return _fold_sequential(root, ranks)
    try:
        graph_module = _trace(root)
    except _Untraceable as err:
        if method == "fx":
            raise ValueError(f"{err}; fold it with method='sequential' (conv/BN neighbours in nn.Sequential)"
                             ) from err.__cause__
        warnings.warn(f"{err}; folded only conv/BN neighbours inside nn.Sequential containers",
                      FoldFallbackWarning, stacklevel=2)
        return _fold_sequential(root, ranks)
    return _fold_graph(graph_module, ranks, root)


# ----------------------------------------------------------------------------------------------- the weights

def _affine64(bn: NormLayer) -> tuple[Tensor, Tensor]:
    """s and t of Algorithm 2, line 11, in float64 so the folded weights are rounded once, at the end."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")  # _foldable_bn said so
    gamma, beta = (None if t is None else t.detach().double() for t in (bn.weight, bn.bias))
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    scale, shift = inference_affine(mean, var, gamma, beta, float(bn.eps))
    return scale, shift


def _with_weights(layer: WeightLayer, weight: Tensor, bias: Tensor) -> WeightLayer:
    folded = copy.deepcopy(layer)
    like = layer.weight
    folded.weight = nn.Parameter(weight.to(like.dtype), requires_grad=like.requires_grad)
    folded.bias = nn.Parameter(bias.to(like.dtype), requires_grad=like.requires_grad)
    return folded


def _bias64(layer: WeightLayer, channels: int, like: Tensor) -> Tensor:
    return like.new_zeros(channels) if layer.bias is None else layer.bias.detach().double()


def fold_after(layer: WeightLayer, bn: NormLayer) -> WeightLayer:
    """A copy of ``layer`` (conv, transposed conv or linear) that also applies the following batch norm."""
    scale, shift = _affine64(bn)
    w = layer.weight.detach().double()
    out = scale.numel()
    if isinstance(layer, _CONV_T):
        # The weight is (C_in, C_out/groups, *k): output channel g·(C_out/groups) + j sits at [g-th block, j].
        groups, ones = layer.groups, [1] * (w.dim() - 2)
        w = (w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
             * scale.reshape(groups, 1, -1, *ones)).reshape(w.shape)
    else:
        w = w * scale.reshape(out, *([1] * (w.dim() - 1)))  # (C_out, ...): one scale per output row
    b = _bias64(layer, out, w) * scale + shift
    return _with_weights(layer, w, b)


def fold_before(bn: NormLayer, layer: WeightLayer) -> WeightLayer:
    """A copy of ``layer`` (linear, or conv without padding) that also applies the preceding batch norm."""
    scale, shift = _affine64(bn)
    w = layer.weight.detach().double()
    out = w.shape[0]
    groups = getattr(layer, "groups", 1)
    # (C_out, C_in/groups, *k) seen as (groups, C_out/groups, C_in/groups, k): input channel g·(C_in/groups) + i.
    blocks = w.reshape(groups, out // groups, w.shape[1], -1)
    s = scale.reshape(groups, 1, -1, 1)
    t = shift.reshape(groups, 1, -1, 1)
    b = _bias64(layer, out, w) + (blocks * t).sum(dim=(2, 3)).reshape(out)  # W·t + b
    return _with_weights(layer, (blocks * s).reshape(w.shape), b)


# ----------------------------------------------------------------------------------------------- the rules

def _foldable_bn(bn: nn.Module) -> str | None:
    """None if ``bn`` is a fixed map at inference, else why it is not."""
    if not isinstance(bn, NormLayer):
        return "not a batch-norm layer"
    if is_uninitialized(bn):
        return "it is a lazy layer that has not seen a batch yet"
    if bn.running_mean is None or bn.running_var is None:
        return "it has no running statistics (track_running_stats=False), so it normalizes with batch statistics"
    if getattr(bn, "normalize_with", None) == "batch" or getattr(bn, "update_stats", None):
        return "bnlab.tools.freeze set it to use or update batch statistics at inference"
    if not (torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()):
        return "its running statistics are not finite"
    return None


def _spatial_match(layer: WeightLayer, bn: NormLayer, seen: set[int] | None) -> bool:
    """Whether the layer's channel dimension is the one the batch norm normalizes (dimension 1)."""
    expected = 2 if isinstance(layer, nn.Linear) else 2 + len(layer.kernel_size)
    declared = input_ranks(bn)
    if declared and expected not in declared:
        return False
    if seen is not None:
        return seen == {expected}
    # A Linear acts on the last dimension and batch norm on dimension 1: they agree on 2-D input only, which is
    # assumed for BatchNorm1d (an MLP) unless example inputs say otherwise. Conv outputs have channels at 1.
    return not isinstance(layer, nn.Linear) or declared == (2, 3)


def _folded_after(layer: nn.Module, bn: nn.Module, ranks: dict[int, set[int]]) -> WeightLayer | None:
    """``layer`` with the following ``bn`` folded in, or None if the two do not fold."""
    if not isinstance(layer, (*_CONV, *_CONV_T, nn.Linear)) or not isinstance(bn, NormLayer):
        return None
    if _foldable_bn(bn) is not None or is_uninitialized(layer):
        return None
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return None
    return fold_after(layer, bn)


def _folded_before(bn: nn.Module, layer: nn.Module, ranks: dict[int, set[int]]) -> WeightLayer | None:
    """``layer`` with the preceding ``bn`` folded in, or None if the two do not fold."""
    if not isinstance(bn, NormLayer) or _foldable_bn(bn) is not None or is_uninitialized(layer):
        return None
    if isinstance(layer, nn.Linear):
        fits = layer.in_features == bn.num_features
    elif isinstance(layer, _CONV):
        unpadded = layer.padding == "valid" or all(p == 0 for p in layer.padding)
        fits = unpadded and layer.in_channels == bn.num_features
    else:
        return None
    if not fits or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return None
    return fold_before(bn, layer)


def _record_input_ranks(root: nn.Module, example_inputs: Any) -> dict[int, set[int]]:
    """id(batch-norm module) → the ranks of the inputs it saw on ``example_inputs`` (empty without examples)."""
    ranks: dict[int, set[int]] = {}
    if example_inputs is None:
        return ranks
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)

    def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and isinstance(inputs[0], Tensor):
            ranks.setdefault(id(module), set()).add(inputs[0].dim())

    handles = [m.register_forward_pre_hook(record) for _, m in norm_layers(root)]
    try:
        with torch.no_grad():
            root(*args)
    finally:
        for h in handles:
            h.remove()
    return ranks


# ----------------------------------------------------------------------------------------------- torch.fx

class _Untraceable(Exception):
    pass


class _LeafTracer(torch.fx.Tracer):
    """torch's tracer with every batch-norm layer as a leaf, remembering which module it was in on failure."""

    def __init__(self) -> None:
        super().__init__()
        self.path: list[str] = []
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_batch_norm(m) or is_frozen_batch_norm(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the exception first
                self.failed_in = (self.path[-1], type(m).__name__)
            raise
        finally:
            self.path.pop()


def _trace(root: nn.Module) -> torch.fx.GraphModule:
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(root)
    except Exception as err:
        where = tracer.failed_in or ("", type(root).__name__)
        part = f"{where[0]!r} ({where[1]})" if where[0] else f"the model's own forward ({where[1]})"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise _Untraceable(f"torch.fx cannot trace {part}: {first_line}") from err
    return torch.fx.GraphModule(tracer.root, graph, root.__class__.__name__)


def _bn_call(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[nn.Module, str, Any] | None:
    """(module, name, input node) if ``node`` applies a batch-norm layer, in either form a trace produces."""
    if node.op == "call_module" and not node.kwargs and len(node.args) == 1:
        m = modules.get(str(node.target))
        if m is not None and (is_batch_norm(m) or is_frozen_batch_norm(m)):
            return m, str(node.target), node.args[0]
    if node.op == "call_function" and node.target is _module_forward and len(node.args) == 2:
        owner = node.args[0]
        if isinstance(owner, torch.fx.Node) and owner.op == "get_attr":
            m = modules.get(str(owner.target))
            if m is not None:
                return m, str(owner.target), node.args[1]
    return None


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, child = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _fold_graph(gm: torch.fx.GraphModule, ranks: dict[int, set[int]], root: nn.Module) -> Folding:
    """Find the foldable pairs on the traced graph and fold them.

    Usually the pairs are then swapped in ``root`` itself (the folded layer in place of the layer, ``nn.Identity``
    in place of the batch norm), so the result keeps the model's class, its forward and its state_dict keys. A
    model that is already a GraphModule, or that holds bnlab layers inside a GraphModule (where they are called
    as functions and cannot be swapped for Identity), gets the graph rewritten and a GraphModule back.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    function_form = False
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        found = _bn_call(node, modules)
        if found is not None and node.op == "call_function":
            calls[found[1]] = calls.get(found[1], 0) + 1
            function_form = True
    rewrite = isinstance(root, torch.fx.GraphModule) or function_form

    def single_call(node: Any) -> nn.Module | None:
        ok = isinstance(node, torch.fx.Node) and node.op == "call_module" and calls.get(str(node.target)) == 1
        return modules[str(node.target)] if ok and len(node.args) == 1 and not node.kwargs else None

    folded: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for node in list(gm.graph.nodes):
        found = _bn_call(node, modules)
        if found is None:
            continue
        bn, bn_name, source = found
        reason = _foldable_bn(bn)
        if reason is None and not rewrite and calls.get(bn_name, 0) > 1:
            reason = "the module is called more than once in a forward"
        if reason is not None:
            skipped.append((bn_name, reason))
            continue
        layer = single_call(source)
        new = _folded_after(layer, bn, ranks) if layer is not None and len(source.users) == 1 else None
        target = str(source.target)
        if new is None:
            user = next(iter(node.users)) if len(node.users) == 1 else None
            layer = single_call(user)
            new = None if user is None or layer is None else _folded_before(bn, layer, ranks)
            if user is None or new is None:
                skipped.append((bn_name, "no conv or linear layer next to it that it can fold into"))
                continue
            target = str(user.target)
        folded.append((bn_name, target))
        if not rewrite:
            _set_submodule(root, target, new)
            _set_submodule(root, bn_name, nn.Identity())
            continue
        _set_submodule(gm, target, new)
        node.replace_all_uses_with(node.args[1] if node.op == "call_function" else node.args[0])
        owner = node.args[0] if node.op == "call_function" else None
        gm.graph.erase_node(node)
        if isinstance(owner, torch.fx.Node) and not owner.users:
            gm.graph.erase_node(owner)
    skipped = list(dict.fromkeys(skipped))  # a layer called at several places is reported once
    if not rewrite:
        return Folding(root.eval(), folded, skipped, "fx")
    gm.delete_all_unused_submodules()
    gm.recompile()
    return Folding(gm.eval(), folded, skipped, "fx")


# ----------------------------------------------------------------------------------------------- nn.Sequential

def _sequentials(root: nn.Module) -> Iterator[tuple[str, nn.Sequential]]:
    for name, m in root.named_modules():
        if isinstance(m, nn.Sequential):
            yield name, m


def _fold_sequential(root: nn.Module, ranks: dict[int, set[int]]) -> Folding:
    folded: list[tuple[str, str]] = []
    seen: set[int] = set()
    for prefix, seq in list(_sequentials(root)):
        keys = list(seq._modules.keys())
        i = 0
        while i + 1 < len(keys):
            a, b = seq._modules[keys[i]], seq._modules[keys[i + 1]]
            names = [f"{prefix}.{k}" if prefix else k for k in keys[i:i + 2]]
            after = None if a is None or b is None else _folded_after(a, b, ranks)
            before = None if a is None or b is None or after is not None else _folded_before(a, b, ranks)
            if after is not None:
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = after, nn.Identity()
                folded.append((names[1], names[0]))
                seen.add(id(b))
                i += 2
            elif before is not None:
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = nn.Identity(), before
                folded.append((names[0], names[1]))
                seen.add(id(a))
                i += 2
            else:
                i += 1
    skipped = [(name, _foldable_bn(m) or "no conv or linear neighbour in an nn.Sequential to fold into")
               for name, m in norm_layers(root) if id(m) not in seen]
    return Folding(root.eval(), folded, skipped, "sequential")
