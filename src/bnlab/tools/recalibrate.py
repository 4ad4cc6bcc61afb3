"""``bnlab.tools.recalibrate``: recompute every batch norm's running statistics, the paper's Algorithm 2.

The running averages a model ends training with describe the weights of the last few hundred steps, seen through
the training batches' augmentation and dropout. Algorithm 2 replaces them with population statistics for the
current weights: run N batches through the network with batch norm in training mode and average each layer's
mini-batch statistics,

    E[x] = E_B[μ_B],   Var[x] = m/(m−1)·E_B[σ²_B]

Three ways to average (``mode``); in all of them E[x] weighs each batch by the values it holds (m_B = N·H·W),
so an uneven last batch counts for what it holds:

- ``"pooled"`` (default): Var[x] is the unbiased variance of all the values the layer saw, m/(m−1)·E_B[σ²_B]
  plus the spread of the batch means around E[x] that the paper's formula leaves out. It does not depend on
  how the data is cut into batches, and equals "paper" in expectation for shuffled, equal batches.
- ``"paper"``: line 10 of Algorithm 2 as printed, Var[x] = E_B[m_B/(m_B−1)·σ²_B] weighted by m_B (Bessel per
  batch): the numbers of :func:`bnlab.reference.population_statistics` on each layer's inputs.
- ``"cumulative"``: torch's ``momentum=None`` cumulative average, run by the layers themselves: every batch
  counts the same whatever its size (what ``torch.optim.swa_utils.update_bn`` computes).

The first two are computed from each layer's inputs in float64 (:mod:`bnlab.tools._population`).

Only the batch-norm layers run in training mode; every other module is in eval mode (dropout off), because the
statistics are for the network as it runs at inference. When ``torch.distributed`` is initialised the sums are
combined, so every process ends with the statistics of all processes' batches.

This is the one tool that changes the caller's model, in place: its running statistics (and batch counts).
Modes and momenta are restored in a ``finally`` block, and on error the statistics are too; a statistics policy
set by :func:`bnlab.freeze` is lifted for the duration (:func:`bnlab.nn.policy.policy_override`) and then restored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnlab.nn.batchnorm import BackendMixin
from bnlab.nn.policy import FOLLOW_MODE, policy_override
from bnlab.tools._batches import Forward, default_forward, take
from bnlab.tools._layers import batch_norm_layers, has_running_stats, is_uninitialized, running_stats
from bnlab.tools._population import PopulationAccumulator, check_finite_statistics

__all__ = ["MODES", "Recalibration", "recalibrate"]

MODES = ("pooled", "paper", "cumulative")
Layers = list[tuple[str, _BatchNorm]]


class Recalibration(NamedTuple):
    """What :func:`recalibrate` did."""

    layers: int  # batch-norm layers whose running statistics were recomputed
    batches: int  # batches run through the model (summed over processes)
    samples: int  # samples those batches held, as counted at the layers (summed over processes)
    mode: str
    unused: tuple[str, ...]  # layers no batch reached: their statistics were left as they were

    def __str__(self) -> str:
        text = (f"recalibrated {self.layers} batch-norm layer(s) from {self.batches} batch(es), {self.samples} "
                f"sample(s), {self.mode} average")
        if self.unused:
            text += f"; not reached by any batch, left as they were: {', '.join(self.unused)}"
        return text


def recalibrate(model: nn.Module, batches: Iterable[Any], *, num_batches: int | None = None,
                forward: Forward | None = None, mode: str = "pooled") -> Recalibration:
    """Replace the running statistics of every batch-norm layer of ``model`` by population statistics.

    Args:
        model: the model, changed in place (its running_mean, running_var and num_batches_tracked only).
        batches: a DataLoader or any iterable of batches: tensors, or tuples/lists whose first item is the input.
        num_batches: use at most this many batches (None: all of them).
        forward: ``forward(model, batch)`` for batches the default cannot feed (dicts, several inputs).
        mode: ``"pooled"`` (default), ``"paper"`` or ``"cumulative"``; see the module docstring.

    Layers without running statistics (``track_running_stats=False``) and FrozenBatchNorm layers are left alone.
    Use batches like the training batches (size and augmentation): each batch is normalized by its own
    statistics as in training, and that decides what the next layers see.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate expects a torch.nn.Module, got {type(model).__name__}")
    layers: Layers = [(name, m) for name, m in batch_norm_layers(model)
              if m.track_running_stats and has_running_stats(m) and not is_uninitialized(m)]
    if not layers:
        raise ValueError("the model has no batch-norm layer with running statistics (track_running_stats=True) "
                         "to recalibrate")
    run = default_forward if forward is None else forward
    iterator = take(batches, num_batches, "recalibrate")
    accumulators = {name: PopulationAccumulator(require_finite=True) for name, _ in layers}
    saved = _Saved(model, layers)
    counter = _Counter()
    # A statistics policy (bnlab.freeze) would stop a layer from using or updating batch statistics.
    with policy_override([m for _, m in layers if isinstance(m, BackendMixin)], FOLLOW_MODE):
        ok = False
        try:
            _prepare(model, layers, mode)
            handles = [m.register_forward_pre_hook(counter.recorder(accumulators[name], name, mode))
                       for name, m in layers]
            if mode == "cumulative":
                handles += [m.register_forward_hook(counter.checker(name, m)) for name, m in layers]
            try:
                with torch.no_grad():
                    for batch in iterator:
                        counter.first_size = None
                        run(model, batch)
                        counter.batches += 1
                        counter.samples += counter.first_size or 0
            finally:
                for h in handles:
                    h.remove()
            totals = _gather(layers, accumulators, mode, [counter.batches, counter.samples])
            report = _write(layers, accumulators, saved, mode, totals)
            ok = True
            return report
        finally:
            saved.restore(statistics=not ok)


class _Counter:
    """Batches fed to the model, and the samples in each: the N of the first batch-norm input of a forward.

    A batch whose statistics are not finite is refused (NonFiniteBatchError), named by its index and samples.
    """

    def __init__(self) -> None:
        self.batches = self.samples = 0
        self.first_size: int | None = None

    def batch(self) -> str:
        """The batch being fed, for messages: its index and its samples, counted from 0 in the order fed."""
        last = self.samples + (self.first_size or 1) - 1
        return f"batch {self.batches} (samples {self.samples} to {last}; both counted from 0)"

    def recorder(self, accumulator: PopulationAccumulator, name: str, mode: str) -> Any:
        def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if not inputs or not isinstance(inputs[0], Tensor):
                return
            x = inputs[0]
            if self.first_size is None:
                self.first_size = x.shape[0]
            if mode != "cumulative":
                accumulator.add(x, name, self.batch())
            else:
                accumulator.count(x)  # the layer averages its own statistics (momentum=None)
        return record

    def checker(self, name: str, layer: _BatchNorm) -> Any:
        """For "cumulative": once the layer has averaged a batch in, its running statistics must be finite."""
        def check(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            mean, var = running_stats(layer)
            check_finite_statistics(mean, var, name, self.batch())
        return check


class _Saved:
    """Everything recalibration changes on the way, to put back afterwards."""

    def __init__(self, model: nn.Module, layers: Layers) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.layers = layers
        self.momenta = [m.momentum for _, m in layers]
        self.stats: list[tuple[Tensor, Tensor, Tensor | None]] = [
            (running_stats(m)[0].clone(), running_stats(m)[1].clone(),
             None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
            for _, m in layers]

    def restore_layer_stats(self, index: int) -> None:
        module = self.layers[index][1]
        mean, var, count = self.stats[index]
        with torch.no_grad():
            running_mean, running_var = running_stats(module)
            running_mean.copy_(mean)
            running_var.copy_(var)
            if count is not None and module.num_batches_tracked is not None:
                module.num_batches_tracked.copy_(count)

    def restore(self, statistics: bool) -> None:
        for module, training in self.modes:
            module.training = training
        for (_, module), momentum in zip(self.layers, self.momenta, strict=True):
            module.momentum = momentum
        if statistics:
            for index in range(len(self.layers)):
                self.restore_layer_stats(index)


def _prepare(model: nn.Module, layers: Layers, mode: str) -> None:
    for module in model.modules():
        module.training = False
    for _, module in layers:
        module.training = True
        if mode == "cumulative":
            module.momentum = None
            module.reset_running_stats()
        else:
            # The sums are computed here; momentum 0 leaves the buffers as they are meanwhile.
            module.momentum = 0.0


def _gather(layers: Layers, accumulators: dict[str, PopulationAccumulator],
            mode: str, totals: list[int]) -> list[int]:
    """Combine every layer's accumulator (and the batch and sample totals) over the processes, if there are
    several. Each process receives all processes' sums and merges them in rank order, so all end equal."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return totals
    device = running_stats(layers[0][1])[0].device
    parts = [torch.tensor(totals, dtype=torch.float64, device=device)]
    for name, module in layers:
        if mode == "cumulative":
            # Each process holds the plain mean of its own t batches; they combine weighted by t.
            acc = accumulators[name]
            counts = torch.tensor([acc.batches, acc.samples], dtype=torch.float64, device=device)
            parts += [counts, *(t.double().to(device) for t in running_stats(module))]
        else:
            parts.append(accumulators[name].packed(module.num_features, device))
    mine = torch.cat(parts)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    grand = torch.stack(everyone).sum(0)[:2]
    for name, _ in layers:
        accumulators[name] = PopulationAccumulator()
    for flat in everyone:
        offset = 2
        for name, module in layers:
            channels = module.num_features
            size = 2 + 2 * channels if mode == "cumulative" else 3 + 4 * channels
            chunk = flat[offset:offset + size]
            offset += size
            if mode == "cumulative":
                _merge_cumulative(accumulators[name], chunk, channels)
            else:
                accumulators[name].merge_packed(chunk, channels)
    return [round(v) for v in grand.tolist()]


def _merge_cumulative(acc: PopulationAccumulator, chunk: Tensor, channels: int) -> None:
    # A process's cumulative averages over its t batches: combined weighted by t, Σ t·mean / Σ t (and var).
    t, samples = (round(v) for v in chunk[:2].tolist())
    acc.batches += t
    acc.samples += samples
    if t:
        mean, var = chunk[2:].reshape(2, channels).unbind(0)
        acc.merge_mean_var(t, mean, var)


def _write(layers: Layers, accumulators: dict[str, PopulationAccumulator],
           saved: _Saved, mode: str, totals: list[int]) -> Recalibration:
    unused = []
    for index, (name, module) in enumerate(layers):
        acc = accumulators[name]
        if acc.batches == 0:
            unused.append(name or "the model")
            saved.restore_layer_stats(index)
            continue
        with torch.no_grad():
            if mode != "cumulative" or acc.mean is not None:
                # The layer's own cumulative average stands unless processes were combined (acc.mean set).
                mean, var = acc.result("paper" if mode == "cumulative" else mode)
                running_mean, running_var = running_stats(module)
                running_mean.copy_(mean)
                running_var.copy_(var)
            if module.num_batches_tracked is not None:
                module.num_batches_tracked.fill_(acc.batches)
    if len(unused) == len(layers):
        raise ValueError("no batch reached any batch-norm layer: the batches were empty, or forward= never called "
                         "the model")
    return Recalibration(len(layers) - len(unused), totals[0], totals[1], mode, tuple(unused))
