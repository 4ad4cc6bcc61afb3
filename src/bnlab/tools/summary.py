"""A Keras-style summary of a PyTorch model: its layers, their output shapes, and the parameters it holds.

Keras counts as a layer's parameters every weight it saves: a ``BatchNormalization`` over k features holds 4k,
the 2k trainable γ and β and the 2k non-trainable moving mean and variance (seed 004). PyTorch keeps the moving
statistics as *buffers*, not parameters, so ``sum(p.numel() for p in model.parameters())`` gives 2k. The summary
counts the way Keras does:

- **trainable**: parameters with ``requires_grad`` (what an optimizer moves);
- **non-trainable**: parameters with ``requires_grad=False`` (frozen) and the floating-point buffers the
  ``state_dict`` saves (batch norm's ``running_mean`` and ``running_var``): values the layer computes with that
  back-propagation does not train;
- **not counted**: ``num_batches_tracked``, and any other integer buffer. It is a counter of training steps, not
  a value the layer computes its output from: with a ``momentum`` it is never read, and with ``momentum=None``
  it only sets the averaging factor 1/n of the running statistics. Keras has no such weight, so leaving it out
  gives Keras's 4k per batch-norm layer exactly; the summary reports the counters apart (one per layer).
  Non-persistent buffers (caches the ``state_dict`` does not save) are not counted either.

A tensor shared by several layers counts once: in the row of the first layer that holds it, and once in the
totals. Output shapes come from one forward pass on a batch of ``batch_size`` random examples (``input_size``
is one example's shape, without the batch dimension, as Keras's ``input_shape``), run in eval mode under
``torch.no_grad()``: batch norm's running statistics are not updated, and every module's train/eval mode is
restored afterwards, so the caller's model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.parameter import is_lazy

__all__ = ["LayerSummary", "ModelSummary", "summary"]

NOT_CALLED = "—"  # the output shape of a layer the forward pass did not call (or when no input was given)
MAX_BLOCK = 8  # the longest block of layers ModelSummary.rows(collapse=True) looks for repetitions of


@dataclass(frozen=True)
class LayerSummary:
    """One row: a module that holds parameters or buffers of its own, or a leaf (ReLU, Flatten: 0 parameters).

    Attributes:
        name: its qualified name in the model (``"3"``, ``"blocks.0.bn"``).
        kind: its class name (``"Linear"``, ``"BatchNorm1d"``).
        output_shape: ``"(None, 100)"``, the batch dimension shown as None (Keras's notation); ``"—"`` when the
            forward pass did not call it or no input was given. A module called several times shows its first call.
        trainable, non_trainable: the elements it holds (see the module docstring), shared tensors counted in the
            first row only.
        calls: how many times the forward pass called it.
    """

    name: str
    kind: str
    output_shape: str
    trainable: int
    non_trainable: int
    calls: int = 0

    @property
    def params(self) -> int:
        """Keras's "Param #": trainable and non-trainable together."""
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`summary` returns; ``str()`` of it is the Keras-style text table.

    Attributes:
        model: the model's class name.
        layers: the rows, in the order of ``model.named_modules()``.
        trainable, non_trainable: the totals, each shared tensor counted once.
        trainable_bytes, non_trainable_bytes: their memory (elements × element size).
        counters: elements of integer buffers (``num_batches_tracked``), not counted as parameters.
        input_shape: the input the shapes come from, ``"(None, 1, 28, 28)"``, or "" when none was given.
    """

    model: str
    layers: tuple[LayerSummary, ...]
    trainable: int
    non_trainable: int
    trainable_bytes: int
    non_trainable_bytes: int
    counters: int
    input_shape: str = ""

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def rows(self, collapse: bool = False) -> list[list[Any]]:
        """``[layer (type), output shape, Param #, trainable, non-trainable]`` per layer.

        With ``collapse``, a block of up to :data:`MAX_BLOCK` consecutive layers repeated several times in a row
        (same types, shapes and counts: Linear, BatchNorm1d, ReLU, ... 100 times) is shown once, each of its rows
        labelled ``"3 … 297 (Linear) ×99"`` (its first and last occurrence and how many) with one layer's
        counts; so a 100-layer network fits on a screen."""
        out: list[list[Any]] = []
        layers = self.layers
        i = 0
        while i < len(layers):
            period, repeats = (1, 1) if not collapse else _repetition(layers, i)
            for k in range(period):
                layer = layers[i + k]
                last = layers[i + k + (repeats - 1) * period]
                label = f"{layer.name} ({layer.kind})" if repeats == 1 else \
                    f"{layer.name} … {last.name} ({layer.kind}) ×{repeats}"
                out.append([label, layer.output_shape, layer.params, layer.trainable, layer.non_trainable])
            i += period * repeats
        return out

    def totals(self) -> list[str]:
        """The three lines under Keras's table, and the counters' line."""
        lines = [f"Total params: {self.total:,} ({_size(self.trainable_bytes + self.non_trainable_bytes)})",
                 f"Trainable params: {self.trainable:,} ({_size(self.trainable_bytes)})",
                 f"Non-trainable params: {self.non_trainable:,} ({_size(self.non_trainable_bytes)})"]
        if self.counters:
            lines.append(f"Not counted: {self.counters:,} integer buffer element(s) (num_batches_tracked: a step "
                         f"counter, not a weight)")
        return lines

    def __str__(self) -> str:
        heads = ["Layer (type)", "Output Shape", "Param #"]
        body = [[r[0], r[1], f"{r[2]:,}"] for r in self.rows()]
        widths = [max(len(h), *(len(r[k]) for r in body)) if body else len(h) for k, h in enumerate(heads)]
        widths = [max(w, m) for w, m in zip(widths, (30, 24, 12), strict=True)]

        def line(cells: Sequence[str]) -> str:
            return f" {cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}"

        rule = "─" * (sum(widths) + 6)
        text = [f'Model: "{self.model}"' + (f", input {self.input_shape}" if self.input_shape else ""), rule,
                line(heads), "═" * len(rule), *(line(r) for r in body), rule, *(f" {t}" for t in self.totals())]
        return "\n".join(text)


def _key(layer: LayerSummary) -> tuple[str, str, int, int]:
    return layer.kind, layer.output_shape, layer.trainable, layer.non_trainable


def _repetition(layers: Sequence[LayerSummary], start: int) -> tuple[int, int]:
    """(period, repeats) of the longest run of one block repeated from ``start`` (the shortest block among the
    longest runs); (1, 1) when nothing repeats."""
    keys = [_key(layer) for layer in layers]
    best = (1, 1)
    for period in range(1, MAX_BLOCK + 1):
        block = keys[start:start + period]
        if len(block) < period:
            break
        repeats = 1
        while keys[start + repeats * period:start + (repeats + 1) * period] == block:
            repeats += 1
        if repeats > 1 and period * repeats > best[0] * best[1]:
            best = (period, repeats)
    return best


def _size(nbytes: int) -> str:
    """Keras's way: 1,234 bytes → "1.21 KB" (units of 1,024)."""
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _shape_text(value: Any, batch: int) -> str:
    """A module output's shape: a tensor's with dim 0 as None when it is the batch; tuples and dicts of them."""
    if isinstance(value, Tensor):
        dims = ["None" if i == 0 and d == batch else str(d) for i, d in enumerate(value.shape)]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_shape_text(v, batch) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v, batch)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _own_state(module: torch.nn.Module) -> list[tuple[str, Tensor]]:
    """The parameters and persistent buffers ``module`` holds itself (not its children's): its state_dict's
    entries without a dot."""
    entries = module.state_dict(keep_vars=True)
    return [(k, v) for k, v in entries.items() if "." not in k and isinstance(v, Tensor)]


def _inputs(model: torch.nn.Module, input_size: Any, batch_size: int) -> tuple[Tensor, ...]:
    """Random inputs of ``input_size`` (one shape, or a list of shapes for a model of several inputs), on the
    device and in the floating dtype of the model's first parameter or buffer (CPU float32 if it has none)."""
    shapes = [input_size] if input_size and all(isinstance(d, int) for d in input_size) else list(input_size)
    for shape in shapes:
        if not isinstance(shape, Sequence) or not shape or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ValueError(f"input_size is the shape of one example without the batch dimension, positive "
                             f"integers, e.g. input_size=(1, 28, 28), or a list of such shapes for several inputs; "
                             f"got {input_size!r}")
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = floating[0].dtype if floating else torch.float32
    generator = torch.Generator().manual_seed(0)  # leaves the global generator alone
    return tuple(torch.randn(batch_size, *shape, generator=generator).to(device=device, dtype=dtype)
                 for shape in shapes)


def summary(model: torch.nn.Module, input_size: Sequence[int] | Sequence[Sequence[int]] | None = None, *,
            input_data: Tensor | Sequence[Tensor] | None = None, batch_size: int = 2) -> ModelSummary:
    """A Keras-style summary of ``model``: layers, output shapes, trainable and non-trainable parameters.

    Args:
        model: any ``torch.nn.Module``; left as it was (modes restored, no running statistic updated).
        input_size: one example's shape without the batch dimension (``(1, 28, 28)``), or a list of shapes for a
            model of several inputs; the output shapes come from a forward pass on ``batch_size`` random examples
            (N(0, 1), in the dtype and on the device of the model's first parameter). None (and no
            ``input_data``): parameters only, every output shape "—".
        input_data: the input itself instead (a tensor, or a sequence of tensors passed as separate arguments);
            its first dimension is the batch.
        batch_size: the batch of the forward pass with ``input_size`` (2: one example is legal in eval mode, but
            some models reshape by a batch of at least 2).

    Returns:
        A :class:`ModelSummary`; ``print(summary(model, (784,)))`` prints the Keras-style table. Counting rules:
        the module docstring (batch norm over k features: 2k trainable, 2k non-trainable, and its
        ``num_batches_tracked`` not counted).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: uninitialized lazy parameters (run one forward pass first), a malformed ``input_size``, or a
            forward pass that fails on the input (the message gives the input's shape and the error).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"summary takes a torch.nn.Module, got {type(model).__name__}")
    if any(is_lazy(t) for t in [*model.parameters(), *model.buffers()]):
        raise ValueError("the model has uninitialized lazy parameters (LazyLinear, LazyBatchNorm, ...), whose sizes "
                         "are not known yet; run one forward pass on a real batch first, then summarize it")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if input_size is not None and input_data is not None:
        raise ValueError("give input_size or input_data, not both")

    named = list(model.named_modules())
    listed = [(name, m) for name, m in named if not any(True for _ in m.children()) or _own_state(m)]
    shapes: dict[int, str] = {}
    calls: dict[int, int] = {}
    inputs: tuple[Tensor, ...] | None = None
    if input_data is not None:
        inputs = (input_data,) if isinstance(input_data, Tensor) else tuple(input_data)
        if not inputs or not all(isinstance(t, Tensor) and t.dim() > 0 for t in inputs):
            raise ValueError("input_data must be a tensor with a batch dimension, or a sequence of such tensors")
        batch_size = inputs[0].shape[0]
    elif input_size is not None:
        inputs = _inputs(model, input_size, batch_size)
    if inputs is not None:
        _trace(model, listed, inputs, batch_size, shapes, calls)

    seen: set[int] = set()
    layers, totals = [], {"trainable": 0, "non_trainable": 0, "trainable_bytes": 0, "non_trainable_bytes": 0}
    counters = 0
    for name, module in listed:
        counts = {"trainable": 0, "non_trainable": 0}
        for _, tensor in _own_state(module):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            n = tensor.numel()
            if not (tensor.is_floating_point() or tensor.is_complex()):
                counters += n
                continue
            kind = "trainable" if isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad else \
                "non_trainable"
            counts[kind] += n
            totals[kind] += n
            totals[f"{kind}_bytes"] += n * tensor.element_size()
        layers.append(LayerSummary(name or "(model)", type(module).__name__, shapes.get(id(module), NOT_CALLED),
                                   counts["trainable"], counts["non_trainable"], calls.get(id(module), 0)))
    input_shape = ", ".join(_shape_text(t, batch_size) for t in inputs) if inputs is not None else ""
    return ModelSummary(type(model).__name__, tuple(layers), totals["trainable"], totals["non_trainable"],
                        totals["trainable_bytes"], totals["non_trainable_bytes"], counters, input_shape)


def _trace(model: torch.nn.Module, listed: Iterable[tuple[str, torch.nn.Module]], inputs: tuple[Tensor, ...],
           batch: int, shapes: dict[int, str], calls: dict[int, int]) -> None:
    """One forward pass in eval mode under no_grad, recording each listed module's first output shape and its
    calls; every module's training flag is restored and every hook removed, whatever happens."""
    modes = [(m, m.training) for m in model.modules()]

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        shapes.setdefault(id(module), _shape_text(output, batch))

    handles = [m.register_forward_hook(hook) for _, m in listed]
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    except Exception as err:
        given = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ValueError(f"the forward pass of {type(model).__name__} failed on input of shape {given} "
                         f"({type(err).__name__}: {err}); input_size is one example's shape without the batch "
                         f"dimension, e.g. (784,) for an MLP or (1, 28, 28) for a CNN") from err
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
