"""A trained generator in each of the four sampling modes, the batch-dependence test, and the doctor's look at it.

Every mode runs on a copy of the generator, so sampling in train mode (which moves the running statistics) leaves
the trained network as it was:

- ``train``: BN uses the batch statistics of each batch of ``sample_batch`` z (the PyTorch DCGAN example samples
  so: it never calls ``eval()``);
- ``eval``: BN uses the running statistics, exponential averages over the batches of a generator that changed
  at every step (seed 000's advice, and the pitfall);
- ``recalibrated``: eval mode after :func:`bnlab.recalibrate` has replaced the running statistics by averages
  over ``recal_batches`` batches of the trained generator's own batch statistics ("precise BN");
- ``train-batch1``: train mode with one z per batch: each sample is normalized by its own spatial statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

import bnlab
from bnlab.lab.experiments.dcgan_modes.config import MODES, DcganConfig, Mode

__all__ = ["batch_dependence", "doctor_record", "generate", "mode_networks"]


@torch.no_grad()
def generate(model: nn.Module, z: Tensor, batch: int) -> Tensor:
    """``model`` applied to ``z`` (N, latent, 1, 1) in batches of ``batch`` (the last may be smaller), as it is
    (train or eval mode); (N, 1, 28, 28)."""
    return torch.cat([model(chunk) for chunk in z.split(batch)])


def mode_networks(model: nn.Module, config: DcganConfig, recal_z: Sequence[Tensor],
                  modes: Sequence[Mode] = MODES) -> dict[Mode, tuple[nn.Module, int]]:
    """For each mode, (a copy of ``model`` set up for it, the batch size it samples with).

    ``recal_z``: the batches of z recalibration averages over (``config.recal_mode``'s average).
    """
    networks: dict[Mode, tuple[nn.Module, int]] = {}
    for mode in modes:
        net = copy.deepcopy(model)
        if mode == "recalibrated":
            if any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
                bnlab.recalibrate(net, recal_z, mode=config.recal_mode)
            net.eval()
        else:
            net.train(mode in ("train", "train-batch1"))
        networks[mode] = (net, 1 if mode == "train-batch1" else config.sample_batch)
    return networks


@torch.no_grad()
def batch_dependence(model: nn.Module, z_a: Tensor, companions: tuple[Tensor, Tensor]) -> tuple[float, bool, Tensor]:
    """G(z_a) computed in one batch with each of two companion batches, ``model`` as it is (train or eval mode).

    ``z_a`` is (1, latent, 1, 1), each companion batch (B − 1, latent, 1, 1). Returns (max |difference|, whether
    the two images are bit-identical, the two images (2, 1, 28, 28)). Runs on a copy: train mode's running
    statistics updates stay there.
    """
    net = copy.deepcopy(model)
    images = torch.cat([net(torch.cat([z_a, c]))[:1] for c in companions])
    return float((images[0] - images[1]).abs().max()), bool(torch.equal(images[0], images[1])), images


def doctor_record(model: nn.Module, z_batches: Sequence[Tensor]) -> dict[str, Any]:
    """bnlab.doctor's report on ``model`` in eval mode (as it would sample after ``eval()``) on ``z_batches``:
    its summary, its text, whether it is healthy, and its findings grouped by kind (the table the report shows)."""
    report = bnlab.doctor(copy.deepcopy(model).eval(), list(z_batches))
    findings = [{"kind": group.kind.title, "severity": finding.severity, "layer": finding.layer or "(model)",
                 "measure": group.kind.label, "value": _plain(finding.value), "detail": finding.detail or
                 finding.message, "fix": finding.fix}
                for group in report.groups() for finding in group.findings]
    return {"summary": report.summary(), "text": report.to_text(), "healthy": report.healthy, "findings": findings}


def _plain(value: Any) -> Any:
    """A finding's number for JSON: finite floats rounded, anything else as text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value, 6) if value == value and abs(value) != float("inf") else str(value)
    return str(value)
