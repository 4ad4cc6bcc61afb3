"""The one-thread fixture shared by the data and lab tests (tests/lab/conftest.py imports it from here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The lab's default: its networks and data are small, and on a busy 2-core machine a second intra-op thread
    makes each operation wait for a descheduled peer (a 100-step test took 40 s with 2 threads, 0.1 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
