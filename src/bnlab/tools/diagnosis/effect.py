"""The measured effect: loss (and accuracy) in train mode, eval mode and eval after recalibration.

All three run on copies of the model with every module but batch norm in eval mode, so that dropout does not blur
the comparison: the differences come from which statistics normalize.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.tools._batches import Forward
from bnlab.tools._layers import batch_norm_layers
from bnlab.tools.diagnosis.report import Effect, Score
from bnlab.tools.recalibrate import recalibrate


def measure(model: nn.Module, batches: list[Any], labels: list[Tensor],
            forward: Forward) -> tuple[Effect, list[str]]:
    """Score ``model`` (not modified) on ``batches`` with ``labels`` (one tensor per batch).

    Returns the effect and notes on the rows that could not be measured (e.g. batches too small for batch
    statistics), which are left out rather than failing the whole report.
    """
    notes: list[str] = []
    train = copy.deepcopy(model).eval()
    for _, module in batch_norm_layers(train):
        module.train()
    recalibrated: nn.Module | None = None
    fresh = copy.deepcopy(model).eval()
    try:
        recalibrate(fresh, batches, forward=forward)
        recalibrated = fresh
    except ValueError as err:
        notes.append(f"no eval-after-recalibration score: {err}")
    runs = [
        ("train", "train mode (batch statistics)", train),
        ("eval", "eval mode (running statistics)", copy.deepcopy(model).eval()),
        ("recalibrated", "eval mode after recalibrating on these batches", recalibrated),
    ]
    scores, loss_name, samples = [], "", 0
    for mode, description, network in runs:
        if network is None:
            continue
        try:
            loss, accuracy, loss_name, samples = _score(network, batches, labels, forward)
        except ValueError as err:
            if mode != "train":
                raise
            notes.append(f"no train-mode score: {err}")
            continue
        scores.append(Score(mode, description, loss, accuracy))
    return Effect(samples, loss_name, tuple(scores)), notes


def _score(model: nn.Module, batches: list[Any], labels: list[Tensor],
           forward: Forward) -> tuple[float, float | None, str, int]:
    total_loss, correct, samples = 0.0, 0, 0
    classification = True
    with torch.no_grad():
        for batch, y in zip(batches, labels, strict=True):
            out = forward(model, batch)
            if not isinstance(out, Tensor):
                raise TypeError(f"to measure the effect the model must return a tensor, got {type(out).__name__}; "
                                f"pass forward= that returns the logits or predictions")
            y = y.to(out.device)
            classification = out.dim() == 2 and not y.is_floating_point() and y.dim() == 1
            if out.shape[0] != y.shape[0]:
                raise ValueError(f"a batch of {out.shape[0]} outputs came with {y.shape[0]} labels")
            if classification:
                total_loss += float(nn.functional.cross_entropy(out.float(), y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
            else:
                target = y.to(out.dtype).reshape(out.shape)
                total_loss += float(nn.functional.mse_loss(out, target, reduction="sum")) / max(out[0].numel(), 1)
            samples += y.shape[0]
    if samples == 0:
        raise ValueError("no labelled samples to measure the effect on")
    accuracy = correct / samples if classification else None
    return total_loss / samples, accuracy, "cross-entropy" if classification else "mean squared error", samples
