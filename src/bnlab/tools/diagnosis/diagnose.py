"""``bnlab.tools.doctor``: examine a model's batch norm on some batches and report what is wrong, and how to fix it."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.nn.frozen import FrozenBatchNormBase
from bnlab.tools._batches import Forward, default_forward, labels_of, take
from bnlab.tools._layers import norm_layers
from bnlab.tools.diagnosis import checks
from bnlab.tools.diagnosis.effect import measure
from bnlab.tools.diagnosis.observe import input_variances, observe
from bnlab.tools.diagnosis.report import SEVERITIES, Finding, LayerGap, Report

__all__ = ["doctor"]


def doctor(model: nn.Module, batches: Iterable[Any], *, labels: Tensor | Sequence[Tensor] | None = None,
           forward: Forward | None = None, num_batches: int | None = None) -> Report:
    """Examine every batch-norm layer of ``model`` on ``batches``; the model is not modified.

    Args:
        model: the model as it would be used for inference (its mode is one of the things checked).
        batches: tensors, or (inputs, labels) pairs such as a DataLoader's. Use batches of the size used in
            training: the values-per-channel check reads their size. They are held in memory (see num_batches).
        labels: per-batch label tensors, or one tensor of all labels in batch order. When given (or when the
            batches are pairs), the report also measures loss (and accuracy, for integer class labels) in train
            mode, eval mode and eval mode after recalibration.
        forward: ``forward(model, batch)`` for batches the default cannot feed (dicts, several inputs).
        num_batches: use at most this many batches (None: all).

    Returns a :class:`~bnlab.tools.diagnosis.report.Report`, with findings sorted by severity; every code is listed
    in ``bnlab.tools.diagnosis.checks.CODES``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"doctor expects a torch.nn.Module, got {type(model).__name__}")
    run = default_forward if forward is None else forward
    held = list(take(batches, num_batches, "doctor"))
    if not held:
        raise ValueError("doctor needs at least one batch to examine the model on, got none")
    per_batch = _labels(held, labels)
    # Whatever the model draws (dropout forced on, noise layers) and whatever the doctor seeds, every random
    # generator of the caller (the CPU's, and those of the CUDA devices the model and data live on) is put back.
    with torch.random.fork_rng(devices=_cuda_devices(model, held)):
        return _examine(model, held, per_batch, run)


def _examine(model: nn.Module, held: list[Any], per_batch: list[Tensor] | None, run: Forward) -> Report:
    findings: list[Finding] = checks.training_mode(model)
    bad_data = _non_finite_inputs(held)
    findings += checks.data_non_finite(bad_data, len(held))
    patient = copy.deepcopy(model).eval()
    observations, samples = observe(patient, held, run)
    layers = norm_layers(patient)
    findings += checks.activations_non_finite(_first_non_finite(observations, set(bad_data)), len(held))
    clean = [i for i in range(len(held)) if i not in bad_data]
    dropout_ratios = _variance_shift(patient, [held[i] for i in clean], run,
                                     [n for n, o in observations.items() if o.dropouts_upstream])
    gaps: list[LayerGap] = []
    for name, module in layers:
        obs = observations[name]
        findings += checks.statistics_health(obs)
        error, unconverged = checks.gap(obs), checks.unconverged_gap(obs)
        if error is not None:
            gaps.append(LayerGap(name, float(error.mean()), float(error.max())))
        findings += checks.not_converged(obs, error, unconverged)
        findings += checks.statistics_mismatch(obs, error, unconverged)
        if not isinstance(module, FrozenBatchNormBase):
            # Frozen layers use no batch statistics and update nothing: batch size, momentum and reuse are moot.
            findings += checks.few_values(obs)
            findings += checks.keras_momentum(name, module)
            findings += checks.foreign_convention(name, module)
            findings += checks.convention_set(name, module)
            findings += checks.reused(obs)
        findings += checks.after_dropout(obs, dropout_ratios.get(name))
        findings += checks.bias_before(obs)
    notes: list[str] = []
    unreached = [name or "(model)" for name, _ in layers
                 if observations[name].inputs.batches == 0 and not observations[name].non_finite]
    if unreached:
        notes.append(f"not reached by any batch, so not checked against data: {', '.join(unreached)}")
    for name, obs in observations.items():
        ones, typical = obs.inputs.sizes[1], obs.inputs.typical_batch
        if ones and typical is not None and typical >= checks.FEW_VALUES_WARNING:
            # A stray single-sample batch (a data set's last) is no finding, but its omission is said.
            notes.append(f"{ones} batch(es) gave layer {name or '(model)'!r} one value per channel, which has no "
                         f"variance: left out of its statistics")
    effect = None
    if per_batch is not None and layers and clean:
        effect, effect_notes = measure(model, [held[i] for i in clean], [per_batch[i] for i in clean], run)
        notes += effect_notes
        if bad_data:
            notes.append(f"the measured effect leaves out the {len(bad_data)} batch(es) with non-finite inputs")
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return Report(type(model).__name__, len(layers), len(held), samples, tuple(findings), effect, tuple(notes),
                  tuple(gaps))


def _cuda_devices(model: nn.Module, batches: list[Any]) -> list[int]:
    """The CUDA devices the model's tensors and the first batch live on: the generators a forward may draw from."""
    tensors = [*model.parameters(), *model.buffers(), *(_tensors(batches[0]) if batches else [])]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def _tensors(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, tuple | list):
        return [t for item in batch for t in _tensors(item)]
    return []


def _non_finite_inputs(batches: list[Any]) -> dict[int, tuple[int, int]]:
    """Batch index → (NaN, infinite) values among its floating-point inputs (labels excluded), where there are any."""
    found = {}
    for index, batch in enumerate(batches):
        labels = labels_of(batch)
        inputs = [t for t in _tensors(batch) if t is not labels and t.is_floating_point()]
        nan = sum(int(t.isnan().sum()) for t in inputs)
        inf = sum(int(t.isinf().sum()) for t in inputs)
        if nan or inf:
            found[index] = (nan, inf)
    return found


def _first_non_finite(observations: dict[str, Any], bad_data: set[int]) -> dict[str, list[int]]:
    """For the batches whose data is finite: the first batch-norm layer (in the model's order) whose input was
    not, and in which batches; there the model produced the NaN or infinities."""
    first: dict[int, str] = {}
    for name, obs in observations.items():
        for index in obs.non_finite:
            if index not in bad_data:
                first.setdefault(index, name)
    by_layer: dict[str, list[int]] = {}
    for index, name in sorted(first.items()):
        by_layer.setdefault(name, []).append(index)
    return by_layer


def _labels(batches: list[Any], labels: Tensor | Sequence[Tensor] | None) -> list[Tensor] | None:
    """One label tensor per batch, or None when there are no labels."""
    if labels is None:
        found = [labels_of(b) for b in batches]
        if all(y is not None for y in found):
            return found  # type: ignore[return-value]
        return None
    if isinstance(labels, Tensor):
        sizes = [_batch_size(b) for b in batches]
        if sum(sizes) != labels.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but the batches hold {sum(sizes)} samples; "
                             f"pass one label per sample, in batch order")
        return list(labels.split(sizes))
    per_batch = list(labels)
    if len(per_batch) != len(batches):
        raise ValueError(f"got {len(per_batch)} label tensors for {len(batches)} batches; pass one per batch")
    return per_batch


def _batch_size(batch: Any) -> int:
    first = batch if isinstance(batch, Tensor) else batch[0] if isinstance(batch, tuple | list) and batch else None
    if not isinstance(first, Tensor):
        raise TypeError("with labels as one tensor, batches must be tensors or (inputs, ...) tuples; pass labels "
                        "as one tensor per batch instead")
    return first.shape[0]


def _variance_shift(model: nn.Module, batches: list[Any], forward: Forward, names: list[str]) -> dict[str, float]:
    """Median over channels of Var[BN input | dropout on] / Var[BN input | dropout off], for the named layers."""
    if not names or not batches:
        return {}
    off = input_variances(model, batches, forward, names)
    noisy = copy.deepcopy(model)
    for module in noisy.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    # A fixed seed for the dropout masks, in generators forked from the caller's: the CPU's and those of the CUDA
    # devices the model lives on (torch.manual_seed would reseed every CUDA device's, outside any fork).
    devices = _cuda_devices(model, batches)
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(0)
        for device in devices:
            torch.cuda.default_generators[device].manual_seed(0)
        on = input_variances(noisy, batches, forward, names)
    return {name: float((on[name] / off[name].clamp_min(1e-12)).median()) for name in names
            if name in on and name in off}
