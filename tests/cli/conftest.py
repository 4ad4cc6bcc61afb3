"""The command-line tests use the lab's finished smoke run and its one-thread setting."""

from __future__ import annotations

from data.conftest import _one_thread  # noqa: F401
from lab.conftest import fig1_run  # noqa: F401
