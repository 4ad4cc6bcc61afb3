"""Fixtures of the ported PyTorch tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These tests check what is computed, on inputs of a few hundred values. On a loaded machine ATen's thread
    # pool costs milliseconds per call to wake for such sizes (measured: 8.5 ms with 2 threads, 0.26 ms with 1,
    # for a BatchNorm2d forward and backward on (2, 3, 6, 6)); one thread runs the same arithmetic.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
