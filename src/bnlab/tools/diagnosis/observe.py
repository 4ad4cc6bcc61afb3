"""What the doctor watches while the model runs: each batch-norm layer's inputs, calls and where they came from.

One pass over the batches in eval mode, with hooks:

- a forward pre-hook on every batch-norm layer gathers the population statistics of its input (pooled, float64,
  :mod:`bnlab.tools._population`), the sizes of the batches it saw and how often it is called per forward;
- forward hooks on every leaf module record which module produced each tensor, and which dropout layers lie
  upstream of it (a batch norm clears that: it is where the variance shift shows). So a batch norm learns
  whether its input came straight from a conv/linear with a bias, or from downstream of a dropout.

Tensors are followed through modules only: a functional op (``F.relu(x)``, ``x + y``) hides the producer, so the
provenance findings can be missed there (never raised wrongly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from bnlab.reference.algorithm1 import values_per_channel
from bnlab.tools._batches import Forward
from bnlab.tools._layers import NormLayer, norm_layers
from bnlab.tools._population import PopulationAccumulator


@dataclass
class LayerObservation:
    """What one batch-norm layer saw over the doctor's batches."""

    name: str
    module: NormLayer
    inputs: PopulationAccumulator = field(default_factory=PopulationAccumulator)
    max_calls_per_forward: int = 0
    biased_producers: dict[str, float] = field(default_factory=dict)  # conv/linear name → mean |bias|
    dropouts_upstream: dict[str, float] = field(default_factory=dict)  # dropout name → p
    non_finite: list[int] = field(default_factory=list)  # batches (0-based) whose input here had NaN or inf
    values_per_sample: int | None = None  # values per channel one sample gives (the spatial size), once seen


@dataclass
class _Origin:
    tensor: Tensor  # held so that its id is not reused within the forward
    producer: nn.Module
    producer_name: str
    dropouts: dict[str, float]


def _is_dropout(module: nn.Module) -> bool:
    return isinstance(module, _DropoutNd) and module.p > 0


def observe(model: nn.Module, batches: list[Any], forward: Forward) -> tuple[dict[str, LayerObservation], int]:
    """Run ``batches`` through ``model`` (a copy in eval mode, owned by the doctor) and watch every BN layer.

    Returns the observations by layer name and the samples the batches held (the N of the first batch-norm
    input of each forward, so that a layer called twice does not count them twice; without batch norm, the N of
    the batch's first tensor). An input with NaN or infinities is left out of the layer's statistics and its
    batch recorded in ``non_finite``.
    """
    layers = norm_layers(model)
    observations = {name: LayerObservation(name, module) for name, module in layers}
    by_module = {id(module): observations[name] for name, module in layers}
    origins: dict[int, _Origin] = {}
    calls: dict[str, int] = {}
    first_size: list[int | None] = [None]  # N of the first batch-norm input in this forward: the batch's samples
    current = [0]  # the batch being run
    samples = 0

    def upstream_dropouts(args: tuple[Any, ...]) -> dict[str, float]:
        found: dict[str, float] = {}
        for a in args:
            origin = origins.get(id(a)) if isinstance(a, Tensor) else None
            if origin is not None:
                found.update(origin.dropouts)
        return found

    def before_norm(module: nn.Module, args: tuple[Any, ...]) -> None:
        obs = by_module[id(module)]
        if not args or not isinstance(args[0], Tensor):
            return
        x = args[0]
        calls[obs.name] = calls.get(obs.name, 0) + 1
        if x.dim() >= 2 and x.shape[0] and x.shape[1]:
            obs.values_per_sample = x[0].numel() // x.shape[1]
        if first_size[0] is None:
            first_size[0] = x.shape[0]
        if not gather(obs.inputs, x, obs.name):
            obs.non_finite.append(current[0])
        origin = origins.get(id(x))
        if origin is None:
            return
        producer = origin.producer
        if isinstance(producer, _ConvNd | nn.Linear) and producer.bias is not None:
            obs.biased_producers[origin.producer_name] = float(producer.bias.detach().abs().mean())
        obs.dropouts_upstream.update(origin.dropouts)

    def after(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, Tensor):
                return
            if id(module) in by_module:
                dropouts: dict[str, float] = {}  # a batch norm is where an upstream variance shift shows
            else:
                dropouts = upstream_dropouts(args)
                if _is_dropout(module):
                    dropouts[name] = float(module.p)  # type: ignore[arg-type]
            origins[id(output)] = _Origin(output, module, name, dropouts)
        return record

    handles = [m.register_forward_pre_hook(before_norm) for _, m in layers]
    handles += [m.register_forward_hook(after(name)) for name, m in model.named_modules()
                if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                origins.clear()
                calls.clear()
                first_size[0] = None
                current[0] = index
                forward(model, batch)
                samples += first_size[0] or _leading_size(batch)
                for name, count in calls.items():
                    observations[name].max_calls_per_forward = max(observations[name].max_calls_per_forward, count)
    finally:
        for h in handles:
            h.remove()
        origins.clear()
    return observations, samples


def gather(accumulator: PopulationAccumulator, x: Tensor, layer: str) -> bool:
    """Add one batch-norm input to the layer's statistics; one value per channel (a single sample, legal at
    inference) has no variance, so that batch is only counted (few_values_per_channel reports it). An input with
    NaN or infinities is left out (False): it would make every statistic NaN."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return False
    if values_per_channel(x) >= 2:
        accumulator.add(x, layer)
    else:
        accumulator.count(x)
    return True


def _leading_size(batch: Any) -> int:
    """N of the batch's first tensor (a tensor, or the first of a tuple, list or dict), 0 if there is none."""
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, tuple | list):
        batch = next((b for b in batch if isinstance(b, Tensor)), None)
    return batch.shape[0] if isinstance(batch, Tensor) and batch.dim() else 0


def input_variances(model: nn.Module, batches: list[Any], forward: Forward,
                    names: list[str]) -> dict[str, Tensor]:
    """The pooled variance of the named batch-norm layers' inputs, (C,) float64 each, over one pass."""
    modules = dict(model.named_modules())
    accumulators = {name: PopulationAccumulator() for name in names}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                gather(accumulators[name], args[0], name)
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {name: acc.result()[1] for name, acc in accumulators.items() if acc.values >= 2}
