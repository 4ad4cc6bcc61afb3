"""Folding on a ``torch.fx`` graph: trace with batch norm as a leaf, find the foldable pairs, swap them in.

The model is traced with every batch-norm layer as a leaf (bnlab's layers included, so they appear as
``call_module`` like torch's); graphs traced elsewhere show bnlab's layers as
``call_function(module_forward, (get_attr bn, x))`` and that form is recognised too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bnlab.nn.batchnorm import module_forward
from bnlab.tools._fold_math import WEIGHT_LAYERS
from bnlab.tools._fold_rules import Ranks, foldable_bn, folded_after, folded_before
from bnlab.tools._layers import is_batch_norm, is_frozen_batch_norm, replace_modules

Pairs = list[tuple[str, str]]


class Untraceable(Exception):
    """torch.fx could not trace the model; the message names the part and the first line of fx's error."""


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


def trace(root: nn.Module) -> torch.fx.GraphModule:
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(root)
    except Exception as err:
        where = tracer.failed_in or ("", type(root).__name__)
        part = f"{where[0]!r} ({where[1]})" if where[0] else f"the model's own forward ({where[1]})"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise Untraceable(f"torch.fx cannot trace {part}: {first_line}") from err
    return torch.fx.GraphModule(tracer.root, graph, root.__class__.__name__)


def _only_input(node: torch.fx.Node) -> Any:
    """The input of a module applied to one input, ``m(x)`` or ``m(input=x)`` (the name torch's layers use)."""
    if len(node.args) == 1 and not node.kwargs:
        return node.args[0]
    if not node.args and list(node.kwargs) == ["input"]:
        return node.kwargs["input"]
    return None


def _bn_call(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[nn.Module, str, Any] | None:
    """(module, name, input node) if ``node`` applies a batch-norm layer, in either form a trace produces."""
    if node.op == "call_module" and _only_input(node) is not None:
        m = modules.get(str(node.target))
        if m is not None and (is_batch_norm(m) or is_frozen_batch_norm(m)):
            return m, str(node.target), _only_input(node)
    if node.op == "call_function" and node.target is module_forward and len(node.args) == 2:
        owner = node.args[0]
        if isinstance(owner, torch.fx.Node) and owner.op == "get_attr":
            m = modules.get(str(owner.target))
            if m is not None:
                return m, str(owner.target), node.args[1]
    return None


def _attribute_reads(gm: torch.fx.GraphModule) -> dict[int, str]:
    """id → name of every tensor or module a ``get_attr`` node reads, but a batch norm fetched only to be applied.

    By identity, not by name: fx names a shared tensor by the first module that holds it, which need not be the
    module being folded (``encoder.weight = decoder.weight``).
    """
    reads: dict[int, str] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        applied = [u for u in node.users if u.op == "call_function" and u.target is module_forward
                   and u.args[0] is node]
        if node.users and len(applied) == len(node.users):
            continue
        reads[id(operator.attrgetter(str(node.target))(gm))] = str(node.target)
    return reads


def _read_elsewhere(module: nn.Module, reads: dict[int, str]) -> str | None:
    """The name under which the forward reads ``module`` or one of its tensors directly, if it does."""
    for item in (module, *module.parameters(), *module.buffers()):
        if id(item) in reads:
            return reads[id(item)]
    return None


def fold_graph(gm: torch.fx.GraphModule, ranks: Ranks, root: nn.Module) -> tuple[nn.Module, Pairs, Pairs]:
    """Find the foldable pairs on the traced graph and fold them: (model, folded, skipped).

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
    reads = _attribute_reads(gm)

    def weight_layer(node: Any) -> tuple[str, nn.Module] | str | None:
        """(name, layer) if ``node`` applies a conv/linear layer that may fold; why not; None if no such layer."""
        if not (isinstance(node, torch.fx.Node) and node.op == "call_module"):
            return None
        name = str(node.target)
        layer = modules[name]
        if not isinstance(layer, WEIGHT_LAYERS):
            return None
        if calls.get(name, 0) > 1:
            return f"{name!r} is called more than once in a forward"
        if _only_input(node) is None:
            return f"{name!r} is called with more than one argument"
        read = _read_elsewhere(layer, reads)
        if read is not None:
            return f"the forward also reads {read!r} directly, which folding into {name!r} would change"
        return name, layer

    folded: Pairs = []
    skipped: Pairs = []
    for node in list(gm.graph.nodes):
        found = _bn_call(node, modules)
        if found is None:
            continue
        bn, bn_name, source = found
        reason = foldable_bn(bn)
        if reason is None and not rewrite and calls.get(bn_name, 0) > 1:
            reason = "the module is called more than once in a forward"
        read = _read_elsewhere(bn, reads)
        if reason is None and read is not None:
            reason = f"the forward also reads {read!r} directly, which folding would remove"
        if reason is not None:
            skipped.append((bn_name, reason))
            continue
        reasons: list[str] = []
        new, target = None, ""
        producer = weight_layer(source)
        if isinstance(producer, str):
            reasons.append(producer)
        elif producer is not None and len(source.users) > 1:
            reasons.append(f"the output of {producer[0]!r} is also used elsewhere")
        elif producer is not None:
            target, made = producer[0], folded_after(producer[1], bn, ranks)
            if isinstance(made, str):
                reasons.append(f"cannot fold into {target!r}: {made}")
            else:
                new = made
        users = list(node.users)
        consumer = weight_layer(users[0]) if new is None and users else None
        if isinstance(consumer, str):
            reasons.append(consumer)
        elif consumer is not None and len(users) > 1:
            reasons.append("its output is also used elsewhere")
        elif consumer is not None:
            target, made = consumer[0], folded_before(bn, consumer[1], ranks)
            if isinstance(made, str):
                reasons.append(f"cannot fold into {target!r}: {made}")
            else:
                new = made
        if new is None:
            skipped.append((bn_name, "; ".join(dict.fromkeys(reasons)) or "no conv or linear layer next to it to fold "
                                                                            "into"))
            continue
        folded.append((bn_name, target))
        old = modules[target]
        # A layer with a batch norm on both sides folds twice: the second fold must start from the first's result.
        modules[target] = new
        if not rewrite:
            replace_modules(root, {old: new, bn: nn.Identity()})
            continue
        replace_modules(gm, {old: new})
        node.replace_all_uses_with(source)
        owner = node.args[0] if node.op == "call_function" else None
        gm.graph.erase_node(node)
        if isinstance(owner, torch.fx.Node) and not owner.users:
            gm.graph.erase_node(owner)
    skipped = list(dict.fromkeys(skipped))  # a layer called at several places is reported once
    if not rewrite:
        return root.eval(), folded, skipped
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded, skipped
