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
from bnlab.tools.diagnosis.report import SEVERITIES, Finding, Report

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

    findings: list[Finding] = checks.training_mode(model)
    patient = copy.deepcopy(model).eval()
    observations, samples = observe(patient, held, run)
    layers = norm_layers(patient)
    dropout_ratios = _variance_shift(patient, held, run, [n for n, o in observations.items() if o.dropouts_upstream])
    for name, module in layers:
        obs = observations[name]
        findings += checks.statistics_health(obs)
        findings += checks.statistics_mismatch(obs)
        if not isinstance(module, FrozenBatchNormBase):
            # Frozen layers use no batch statistics and update nothing: batch size, momentum and reuse are moot.
            findings += checks.few_values(obs)
            findings += checks.keras_momentum(name, module)
            findings += checks.reused(obs)
        findings += checks.after_dropout(obs, dropout_ratios.get(name))
        findings += checks.bias_before(obs)
    notes: list[str] = []
    unreached = [name or "(model)" for name, _ in layers if observations[name].inputs.batches == 0]
    if unreached:
        notes.append(f"not reached by any batch, so not checked against data: {', '.join(unreached)}")
    for name, obs in observations.items():
        ones, typical = obs.inputs.sizes[1], obs.inputs.typical_batch
        if ones and typical is not None and typical >= checks.FEW_VALUES_WARNING:
            # A stray single-sample batch (a data set's last) is no finding, but its omission is said.
            notes.append(f"{ones} batch(es) gave layer {name or '(model)'!r} one value per channel, which has no "
                         f"variance: left out of its statistics")
    effect = None
    if per_batch is not None and layers:
        effect, effect_notes = measure(model, held, per_batch, run)
        notes += effect_notes
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return Report(type(model).__name__, len(layers), len(held), samples, tuple(findings), effect, tuple(notes))


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
    if not names:
        return {}
    off = input_variances(model, batches, forward, names)
    noisy = copy.deepcopy(model)
    for module in noisy.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    # A fixed seed for the dropout masks, without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        on = input_variances(noisy, batches, forward, names)
    return {name: float((on[name] / off[name].clamp_min(1e-12)).median()) for name in names
            if name in on and name in off}
