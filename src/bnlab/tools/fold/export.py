"""Finding pairs with ``torch.export``: the whole computation on example inputs, whatever Python it takes.

``torch.export`` runs the forward on the example inputs and records every tensor operation, with the module
each was called from (``nn_module_stack``) and the parameter or buffer each placeholder stands for. The nodes of
one call of one module form a group; a batch norm folds into a conv or linear layer when the layer's group hands
its one output to the batch norm's group and to nothing else (or, the other way round, when the batch norm's one
output goes only to the layer), when each is called once, and when nothing else reads the layer's tensors. The
graph is only read: the pairs are folded into the model itself (:func:`bnlab.tools.fold.pairs.swap_in`), which
keeps its class and its Python forward.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnlab.tools._layers import NormLayer
from bnlab.tools.fold.graph import first_line
from bnlab.tools.fold.math import WEIGHT_LAYERS
from bnlab.tools.fold.pairs import Option, Site
from bnlab.tools.fold.rules import Ranks

Node = torch.fx.Node


class Uncapturable(Exception):
    """torch.export could not capture the model on the example inputs; the message says why."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep what torch.export prints and logs while it fails (the graph so far, guard warnings) off the user's
    terminal: its failure becomes a note in the fold's report instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def capture(root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.export.ExportedProgram:
    """The model's computation on these inputs (non-strict export: the forward runs as Python)."""
    try:
        with _quiet():
            return torch.export.export(root, args, kwargs, strict=False)
    except Exception as err:
        raise Uncapturable(f"torch.export cannot capture the model on example_inputs ({type(err).__name__}: "
                           f"{first_line(err)})") from err


@dataclass
class _Group:
    """The nodes of one call of one module (the innermost module on each node's stack)."""

    name: str
    module: nn.Module
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Captured:
    sites: list[Site]
    ranks: Ranks
    called: set[int]  # id of every batch norm the forward called


def export_sites(program: torch.export.ExportedProgram, root: nn.Module) -> Captured:
    """The batch-norm calls of the captured forward, with the layers each may fold into."""
    signature = program.graph_signature
    tensors = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}  # placeholder name → FQN
    # Tensors a module keeps outside its parameters and buffers (a bnlab layer's backend_id) are lifted too.
    constants = signature.inputs_to_lifted_tensor_constants
    groups: dict[str, _Group] = {}
    group_of: dict[Node, _Group] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            continue
        key, (path, _) = list(stack.items())[-1]
        if key not in groups:
            try:
                groups[key] = _Group(str(path), root.get_submodule(str(path)))
            except AttributeError:
                continue
        groups[key].nodes.append(node)
        group_of[node] = groups[key]
    calls = Counter(id(g.module) for g in groups.values())

    def owned(node: Node, group: _Group) -> bool:
        """Whether ``node`` is a placeholder for one of the group's module's own parameters or buffers."""
        fqn = (tensors.get(node.name) or constants.get(node.name)) if node.op == "placeholder" else None
        return fqn is not None and _owner(root, fqn) is group.module

    def inputs(group: _Group) -> list[Node]:
        found = [a for n in group.nodes for a in n.all_input_nodes
                 if group_of.get(a) is not group and not owned(a, group)]
        return list(dict.fromkeys(found))

    def outputs(group: _Group) -> list[Node]:
        return [n for n in group.nodes if any(group_of.get(u) is not group for u in n.users)]

    def tied(group: _Group) -> str | None:
        """A parameter or buffer the group uses that the forward also reads elsewhere, by a name outside the
        group's module where it has one (export names a shared tensor after either of its owners)."""
        for a in {a for n in group.nodes for a in n.all_input_nodes if a.op == "placeholder"}:
            if a.name in tensors and any(group_of.get(u) is not group for u in a.users):
                tensor = root.get_parameter(tensors[a.name]) if a.name in signature.inputs_to_parameters \
                    else root.get_buffer(tensors[a.name])
                names = [n for n, t in (*root.named_parameters(remove_duplicate=False),
                                        *root.named_buffers(remove_duplicate=False))
                         if t is tensor and not n.startswith(f"{group.name}.")]
                return (names or [tensors[a.name]])[0]
        return None

    def layer(group: _Group | None, handover: Node) -> tuple[Option | None, str | None]:
        """Whether the weight layer of ``group`` can take a fold through the value ``handover``."""
        if group is None or not isinstance(group.module, WEIGHT_LAYERS):
            return None, None
        if calls[id(group.module)] > 1:
            return None, f"{group.name!r} is called more than once in a forward"
        read = tied(group)
        if read is not None:
            return None, f"the forward also reads {read!r} directly, which folding into {group.name!r} would change"
        return Option("", group.name, group.module), None

    sites: list[Site] = []
    ranks: Ranks = {}
    seen: set[int] = set()
    for group in groups.values():
        bn = group.module
        if not isinstance(bn, NormLayer) or id(bn) in seen:
            continue
        seen.add(id(bn))
        site = Site(group.name, bn)
        sites.append(site)
        ins = inputs(group)
        if calls[id(bn)] > 1:
            site.blocked = "the module is called more than once in a forward"
            continue
        if len(ins) != 1:
            site.blocked = f"it takes {len(ins)} inputs (a residual?), not one"
            continue
        source = ins[0]
        value = source.meta.get("val")
        if isinstance(value, torch.Tensor):
            ranks[id(bn)] = {value.dim()}
        producer = group_of.get(source)
        option, reason = layer(producer, source)
        if option is not None and producer is not None:
            if outputs(producer) != [source] or any(group_of.get(u) is not group for u in source.users):
                reason = f"the output of {producer.name!r} is also used elsewhere"
            else:
                site.options.append(Option("after", option.name, option.layer))
        if reason is not None:
            site.reasons.append(reason)
        out = outputs(group)
        consumers = {id(g): g for u in (out[0].users if len(out) == 1 else ()) if (g := group_of.get(u)) is not None}
        consumer = next(iter(consumers.values())) if len(consumers) == 1 else None
        option, reason = layer(consumer, out[0]) if out and consumer is not None else (None, None)
        if option is not None and consumer is not None:
            elsewhere = any(group_of.get(u) is not consumer for u in out[0].users)
            if len(out) != 1 or elsewhere:
                reason = "its output is also used elsewhere"
            else:
                site.options.append(Option("before", option.name, option.layer))
        if reason is not None:
            site.reasons.append(reason)
        if not site.options and not site.reasons:
            site.reasons.append(f"its input comes from {_describe(source, producer)}, and its output goes to "
                                f"{_describe_users(out, group_of)}: no conv or linear layer next to it")
    called = {id(g.module) for g in groups.values() if isinstance(g.module, NormLayer)}
    return Captured(sites, ranks, called)


def _owner(root: nn.Module, fqn: str) -> nn.Module | None:
    try:
        return root.get_submodule(fqn.rpartition(".")[0])
    except AttributeError:
        return None


def _describe(node: Node, group: _Group | None) -> str:
    if node.op == "placeholder":
        return "the model's input"
    if node.op == "output":
        return "the model's output"
    op = getattr(node.target, "__name__", str(node.target))
    if group is None or not group.name:
        return f"{op} in the model's own forward"
    return f"{op} in {group.name!r} ({type(group.module).__name__})"


def _describe_users(out: list[Node], group_of: dict[Node, _Group]) -> str:
    users = [u for n in out for u in n.users]
    return ", ".join(dict.fromkeys(_describe(u, group_of.get(u)) for u in users[:3]))
