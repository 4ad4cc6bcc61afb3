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
combined, so every process ends with the statistics of all processes' batches. A process that meets an error
(a non-finite batch, a bad batch) still takes part in that one collective, carrying the error in it, so that
every process raises the same error instead of the others waiting for it forever.

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
from bnlab.tools._population import (
    NonFiniteBatchError,
    PopulationAccumulator,
    check_finite_statistics,
    non_finite_error,
)

__all__ = ["MODES", "Recalibration", "recalibrate"]

MODES = ("pooled", "paper", "cumulative")
Layers = list[tuple[str, _BatchNorm]]
# What each process sends ahead of its layers' sums: its batch and sample counts, then its failure, if any:
# its kind, the index of the layer that refused a non-finite batch (-1 otherwise), and that batch's index,
# first sample and size.
_HEADER = 7
_OK, _NON_FINITE, _OTHER = 0, 1, 2


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
            failure: _Failure | None = None
            try:
                with torch.no_grad():
                    for batch in iterator:
                        counter.first_size = None
                        run(model, batch)
                        counter.batches += 1
                        counter.samples += counter.first_size or 0
                        counter.first_size = None  # so that an error fetching the next batch names no size
            except Exception as error:
                if not _distributed():
                    raise
                # The other processes will wait for this one in _gather's collective: go there with the error.
                failure = _Failure(error, counter.batches, counter.samples, counter.first_size or 0)
            finally:
                for h in handles:
                    h.remove()
            totals = _gather(layers, accumulators, mode, [counter.batches, counter.samples], failure)
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
        return _describe_batch(self.batches, self.samples, self.first_size or 0)

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


def _describe_batch(index: int, first: int, size: int) -> str:
    return f"batch {index} (samples {first} to {first + max(size, 1) - 1}; both counted from 0)"


class _Failure(NamedTuple):
    """An error this process met while feeding its batches, and the batch it met it at."""

    error: Exception
    batch: int
    first: int  # the batch's first sample, counted from 0 over this process's batches
    size: int


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


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _layer_size(module: _BatchNorm, mode: str) -> int:
    """Values a layer takes in a process's message: [t, samples, mean, var] for "cumulative", else packed()."""
    return 2 + 2 * module.num_features if mode == "cumulative" else 3 + 4 * module.num_features


def _gather(layers: Layers, accumulators: dict[str, PopulationAccumulator],
            mode: str, totals: list[int], failure: _Failure | None = None) -> list[int]:
    """Combine every layer's accumulator (and the batch and sample totals) over the processes, if there are
    several. Each process receives all processes' sums and merges them in rank order, so all end equal.

    One collective carries everything, the processes' failures too: if any process failed, every process raises
    the error of the first (lowest-ranked) one that did (:func:`_raise_failure`) and nothing is merged."""
    if not _distributed():
        return totals
    dist = torch.distributed
    device = running_stats(layers[0][1])[0].device
    refused = _refused_layer(layers, failure)
    header = [*totals, _OK, -1, 0, 0, 0]
    if failure is not None:
        header[2:] = [_OTHER if refused < 0 else _NON_FINITE, refused, failure.batch, failure.first, failure.size]
    parts = [torch.tensor(header, dtype=torch.float64, device=device)]
    for index, (name, module) in enumerate(layers):
        if index == refused:
            # In place of this layer's sums (never merged: every process raises), the statistics it refused.
            assert failure is not None and isinstance(failure.error, NonFiniteBatchError)
            parts.append(_refused_part(failure.error, module, mode, device))
        elif mode == "cumulative":
            # Each process holds the plain mean of its own t batches; they combine weighted by t.
            acc = accumulators[name]
            counts = torch.tensor([acc.batches, acc.samples], dtype=torch.float64, device=device)
            parts += [counts, *(t.double().to(device) for t in running_stats(module))]
        else:
            parts.append(accumulators[name].packed(module.num_features, device))
    mine = torch.cat(parts)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    for rank, flat in enumerate(everyone):
        if round(float(flat[2])) != _OK:
            _raise_failure(rank, flat, layers, mode, failure)
    grand = torch.stack(everyone).sum(0)[:2]
    for name, _ in layers:
        accumulators[name] = PopulationAccumulator()
    for flat in everyone:
        offset = _HEADER
        for name, module in layers:
            size = _layer_size(module, mode)
            chunk = flat[offset:offset + size]
            offset += size
            if mode == "cumulative":
                _merge_cumulative(accumulators[name], chunk, module.num_features)
            else:
                accumulators[name].merge_packed(chunk, module.num_features)
    return [round(v) for v in grand.tolist()]


def _refused_layer(layers: Layers, failure: _Failure | None) -> int:
    """The index of the layer that refused a non-finite batch in ``failure``; -1 for any other failure."""
    if failure is None or not isinstance(failure.error, NonFiniteBatchError) or failure.error.mean is None:
        return -1
    names = [name for name, _ in layers]
    return names.index(failure.error.layer) if failure.error.layer in names else -1


def _refused_part(error: NonFiniteBatchError, module: _BatchNorm, mode: str, device: torch.device) -> Tensor:
    """A layer's slot in the message, holding the refused mean and variance where the sums would be."""
    assert error.mean is not None and error.var is not None
    part = torch.zeros(_layer_size(module, mode), dtype=torch.float64, device=device)
    start = 2 if mode == "cumulative" else 3
    part[start:start + 2 * module.num_features] = torch.cat([error.mean, error.var]).double().to(device)
    return part


def _raise_failure(rank: int, flat: Tensor, layers: Layers, mode: str, failure: _Failure | None) -> None:
    """Raise, on every process alike, the failure that process ``rank`` sent in ``flat`` (its message)."""
    world = torch.distributed.get_world_size()
    kind, refused, batch, first, size = (round(v) for v in flat[2:_HEADER].tolist())
    where = f"{_describe_batch(batch, first, size)} of process {rank} (of {world})"
    own = None if failure is None else failure.error
    if kind == _NON_FINITE:
        name, module = layers[refused]
        start = _HEADER + sum(_layer_size(m, mode) for _, m in layers[:refused]) + (2 if mode == "cumulative" else 3)
        channels = module.num_features
        error = non_finite_error(flat[start:start + channels], flat[start + channels:start + 2 * channels], name,
                                 where)
        if error is not None:
            raise error from own
    if own is not None and rank == torch.distributed.get_rank():
        raise own
    raise RuntimeError(
        f"process {rank} (of {world}) failed while recalibrating, at {where}; every process stops and leaves its "
        f"model as it was: that process's own error says why"
    ) from own


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
