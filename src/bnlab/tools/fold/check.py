"""Checking a fold on inputs: run the model and the folded model, and compare their outputs within float rounding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

#: Relative tolerance floor (float32 and float64): a wrong fold is off by O(1); rounding by ~1e-6 of the output.
RTOL = 1e-4


@contextlib.contextmanager
def state_kept(model: nn.Module) -> Iterator[None]:
    """Run ``model`` without leaving a trace: its buffers are put back (a layer that updates its statistics in eval,
    set by bnlab.tools.freeze, would change them) and the random state is forked with a fixed seed, so that two
    models with the same random ops (dropout forced on) draw the same numbers."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(0)
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def outputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> list[Tensor]:
    """The tensors of ``model(*args, **kwargs)``, flattened out of nested tuples, lists and dicts (a Hugging Face
    ``ModelOutput`` is a dict); see :func:`state_kept`."""
    with state_kept(model):
        return _tensors(model(*args, **(kwargs or {})))


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value.detach()]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def discrepancy(expected: list[Tensor], got: list[Tensor]) -> tuple[float, float]:
    """(largest |got − expected|, the largest difference float rounding explains) over floating-point outputs.

    Allowed: rtol·(max|expected| + 0.1) with rtol = max(1e-4, 16·ε of the dtype), i.e. 1e-4·max|y| + 1e-5 in
    float32. NaN and infinities must match in place. Outputs of another number or shape differ infinitely.
    """
    if len(expected) != len(got) or any(a.shape != b.shape for a, b in zip(expected, got, strict=True)):
        return float("inf"), 0.0
    error, allowed = 0.0, float("inf")
    for a, b in zip(expected, got, strict=True):
        if not a.is_floating_point():
            continue  # integer outputs (argmax, counts) may flip at ties within rounding
        a64, b64 = a.double(), b.to(a.device).double()
        same = (a64 == b64) | (a64.isnan() & b64.isnan())  # equal infinities and NaN in the same places agree
        diff = torch.where(same, torch.zeros_like(a64), (a64 - b64).abs())
        if diff.numel():
            error = max(error, float(diff.max()))  # NaN against a number is NaN: never within tolerance
            if error != error:
                return error, 0.0
        finite = a64[torch.isfinite(a64)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        rtol = max(RTOL, 16 * torch.finfo(a.dtype).eps)
        allowed = min(allowed, rtol * (scale + 0.1))
    return error, allowed
