"""Finding pairs with ``torch.fx``: trace with batch norm as a leaf, the whole model or module by module.

The model is traced with every batch-norm layer as a leaf (bnlab's layers included, so they appear as
``call_module`` like torch's); graphs traced elsewhere show bnlab's layers as
``call_function(module_forward, (get_attr bn, x))`` and that form is recognised too.

When the whole model cannot be traced, :func:`trace_modules` traces what it can: a module whose forward fx cannot
trace becomes a leaf of its parent's graph and is traced on its own; a module whose own code fx cannot trace is
left, and its children are traced one by one. Each traced forward is a :class:`Part`.
"""

from __future__ import annotations

import inspect
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnlab.nn.batchnorm import module_forward
from bnlab.tools._layers import is_batch_norm, is_frozen_batch_norm, norm_layers, replace_modules
from bnlab.tools.fold.math import WEIGHT_LAYERS
from bnlab.tools.fold.pairs import Decision, Option, Site
from bnlab.tools.fold.rules import activation_of, overridden


class Untraceable(Exception):
    """torch.fx could not trace the model; the message names the part and the first line of fx's error."""


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class _LeafTracer(torch.fx.Tracer):
    """torch's tracer with every batch-norm layer (and the modules in ``opaque``) as a leaf, remembering the
    innermost module it was in when tracing failed."""

    def __init__(self, opaque: set[int] | None = None) -> None:
        super().__init__()
        self.opaque = opaque or set()
        self.path: list[str] = []
        self.failed_in: tuple[str, nn.Module] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Subclasses of torch's conv/linear layers that keep torch's forward are leaves too, so they show as calls
        # of the layer (call_module) that a batch norm may fold into.
        plain_layer = isinstance(m, WEIGHT_LAYERS) and overridden(m) is None
        return (id(m) in self.opaque or is_batch_norm(m) or is_frozen_batch_norm(m) or plain_layer
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the exception first
                self.failed_in = (self.path[-1], m)
            raise
        finally:
            self.path.pop()


def trace(root: nn.Module) -> torch.fx.GraphModule:
    """The whole model's graph; raises :class:`Untraceable` naming the innermost module fx failed in."""
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(root)
    except Exception as err:
        where = tracer.failed_in
        part = (f"{where[0]!r} ({type(where[1]).__name__})" if where and where[0]
                else f"the model's own forward ({type(root).__name__})")
        raise Untraceable(f"torch.fx cannot trace {part}: {first_line(err)}") from err
    return torch.fx.GraphModule(tracer.root, graph, root.__class__.__name__)


# ----------------------------------------------------------------------------------------------- module by module

@dataclass
class Part:
    """The traced forward of the module at ``prefix`` (the model itself for "")."""

    prefix: str
    graph: torch.fx.GraphModule


@dataclass
class Parts:
    parts: list[Part] = field(default_factory=list)
    #: module name ("" for the model) → why fx cannot trace its own code (its children were traced instead)
    untraced: dict[str, str] = field(default_factory=dict)
    #: the modules whose code no trace saw: those in ``untraced`` and the leaves made of untraceable modules
    unseen: list[str] = field(default_factory=list)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _defaults(module: nn.Module) -> dict[str, Any]:
    """The optional arguments of ``module.forward`` (all but the first) at their plain default values.

    Traced with these fixed, a forward such as ``forward(pixel_values, labels=None, return_dict=None)`` branches on
    Python values instead of on fx proxies, which fx cannot do: the trace shows the call with the defaults.
    """
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    plain = (type(None), bool, int, float, str)
    return {p.name: p.default for p in parameters[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and isinstance(p.default, plain)}


def _inside(path: str, others: Any) -> bool:
    return any(path.startswith(f"{other}.") for other in others)


def trace_modules(root: nn.Module) -> Parts:
    """Trace every forward that holds a batch norm, as high up the module tree as fx can (see the module doc)."""
    found = Parts()
    norms = {id(m) for _, m in norm_layers(root)}

    def holds_norm(module: nn.Module) -> bool:
        return any(id(m) in norms for m in module.modules())

    def visit(module: nn.Module, prefix: str) -> None:
        if not holds_norm(module) or id(module) in norms:
            return
        opaque: dict[int, str] = {}
        named = dict(module.named_modules())
        for _ in range(len(named)):  # each failure makes at least one more module a leaf
            tracer = _LeafTracer(set(opaque))
            try:
                graph = tracer.trace(module, concrete_args=_defaults(module) or None)
            except Exception as err:
                failed = tracer.failed_in
                if failed is not None and failed[0] and id(failed[1]) not in opaque:
                    # Every module of the failing class becomes a leaf at once: they run the same code, and a
                    # model with fifty such blocks would otherwise be traced fifty times.
                    opaque.update({id(m): path for path, m in named.items()
                                   if path and type(m) is type(failed[1]) and not _inside(path, opaque.values())})
                    opaque[id(failed[1])] = failed[0]
                    continue
                found.untraced[prefix] = f"{type(module).__name__}: {first_line(err)}"
                found.unseen.append(prefix)
                for name, child in module.named_children():
                    visit(child, _join(prefix, name))
                return
            found.parts.append(Part(prefix, torch.fx.GraphModule(tracer.root, graph, type(module).__name__)))
            for path in opaque.values():
                if _inside(path, (p for p in opaque.values() if p != path)):
                    continue  # inside another leaf: visited with it
                if not holds_norm(named[path]):
                    found.unseen.append(_join(prefix, path))
                visit(named[path], _join(prefix, path))
            return

    visit(root, "")
    return found


# ----------------------------------------------------------------------------------------------- sites

def _only_input(node: torch.fx.Node) -> Any:
    """The input of a module applied to one input, ``m(x)`` or ``m(input=x)`` (the name torch's layers use)."""
    if len(node.args) == 1 and not node.kwargs:
        return node.args[0]
    if not node.args and list(node.kwargs) == ["input"]:
        return node.kwargs["input"]
    return None


def _bn_call(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[nn.Module, str, Any] | None:
    """(module, name, input node) if ``node`` applies a batch-norm layer, in either form a trace produces."""
    if node.op == "call_module":
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


def count_calls(gm: torch.fx.GraphModule) -> Counter[int]:
    """id(module) → how many times the graph calls it (a batch norm called as a function included)."""
    modules = dict(gm.named_modules())
    calls: Counter[int] = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in modules:
            calls[id(modules[str(node.target)])] += 1
        elif node.op == "call_function":
            found = _bn_call(node, modules)
            if found is not None:
                calls[id(found[0])] += 1
    return calls


def function_form(gm: torch.fx.GraphModule) -> bool:
    """Whether the graph calls bnlab layers as functions (traced elsewhere): they can only be removed from it."""
    modules = dict(gm.named_modules())
    return any(n.op == "call_function" and _bn_call(n, modules) is not None for n in gm.graph.nodes)


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


def graph_sites(gm: torch.fx.GraphModule, calls: Counter[int], *, prefix: str = "", rewrite: bool = False,
                aliases: Callable[[nn.Module], str | None] | None = None) -> list[Site]:
    """Every batch-norm call in the graph, with the conv/linear layers it may fold into.

    ``calls`` counts each module's calls over all the graphs searched; ``prefix`` is the traced module's name in
    the model; ``rewrite`` says the graph itself will be rewritten (the batch norm removed from it) rather than
    the modules swapped; ``aliases(module)`` says why a module may not be replaced (registered elsewhere too).
    """
    modules = dict(gm.named_modules())
    reads = _attribute_reads(gm)

    def full(name: str) -> str:
        return _join(prefix, name)

    def weight_layer(node: Any) -> tuple[str, nn.Module] | str | None:
        """(name, layer) if ``node`` applies a conv/linear layer that may fold; why not; None if no such layer."""
        if not (isinstance(node, torch.fx.Node) and node.op == "call_module"):
            return None
        name = str(node.target)
        layer = modules[name]
        if not isinstance(layer, WEIGHT_LAYERS):
            return None
        if calls[id(layer)] > 1:
            return f"{full(name)!r} is called more than once in a forward"
        if _only_input(node) is None:
            return f"{full(name)!r} is called with more than one argument"
        read = _read_elsewhere(layer, reads)
        if read is not None:
            return f"the forward also reads {full(read)!r} directly, which folding into {full(name)!r} would change"
        alias = aliases(layer) if aliases else None
        if alias is not None:
            return alias
        return full(name), layer

    sites: list[Site] = []
    for node in gm.graph.nodes:
        found = _bn_call(node, modules)
        if found is None:
            continue
        bn, bn_name, source = found
        site = Site(full(bn_name), bn, node=node)
        sites.append(site)
        if source is None:
            site.blocked = "it is called with more than one argument (a residual?)"
        elif not rewrite and calls[id(bn)] > 1:
            site.blocked = "the module is called more than once in a forward"
        elif rewrite and _read_elsewhere(bn, reads) is not None:
            site.blocked = f"the forward also reads {full(str(_read_elsewhere(bn, reads)))!r} directly, which " \
                           f"folding would remove"
        elif rewrite and activation_of(bn)[0] != "identity":
            site.blocked = "an activated batch norm called inside a GraphModule: fold the model it was traced from"
        elif aliases is not None and aliases(bn) is not None:
            site.blocked = aliases(bn)
        if site.blocked is not None:
            continue
        producer = weight_layer(source)
        if isinstance(producer, str):
            site.reasons.append(producer)
        elif producer is not None and len(source.users) > 1:
            site.reasons.append(f"the output of {producer[0]!r} is also used elsewhere")
        elif producer is not None:
            site.options.append(Option("after", *producer))
        users = list(node.users)
        consumer = weight_layer(users[0]) if users else None
        if isinstance(consumer, str):
            site.reasons.append(consumer)
        elif consumer is not None and len(users) > 1:
            site.reasons.append("its output is also used elsewhere")
        elif consumer is not None:
            site.options.append(Option("before", *consumer))
    return sites


def rewrite(gm: torch.fx.GraphModule, decision: Decision) -> torch.fx.GraphModule:
    """Take the folded batch norms out of the graph and swap the folded layers in: a GraphModule back."""
    replace_modules(gm, {old: new for old, new in decision.layers.values()})
    for site in decision.sites:
        node = site.node
        node.replace_all_uses_with(node.args[1] if node.op == "call_function" else _only_input(node))
        owner = node.args[0] if node.op == "call_function" else None
        gm.graph.erase_node(node)
        if isinstance(owner, torch.fx.Node) and not owner.users:
            gm.graph.erase_node(owner)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
