"""Keras (on its PyTorch backend) and Flax for the compat tests, skipped with the install command where the
``compat`` extra is absent."""

from __future__ import annotations

import os
import sys
from types import ModuleType

import pytest

INSTALL = "install the compat extra: .venv/bin/pip install -e '.[compat]' (make setup does it)"


@pytest.fixture(scope="session")
def keras() -> ModuleType:
    # Keras picks its backend once, at import: the torch backend, so no TensorFlow is needed or used.
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    module = pytest.importorskip("keras", reason=f"Keras is not installed; {INSTALL}")
    if module.backend.backend() != "torch":
        pytest.skip(f"Keras was imported with the {module.backend.backend()} backend; these tests need "
                    "KERAS_BACKEND=torch")
    return module


@pytest.fixture(scope="session")
def linen() -> ModuleType:
    return pytest.importorskip("flax.linen", reason=f"Flax is not installed; {INSTALL}")


@pytest.fixture(scope="session")
def jax() -> ModuleType:
    return pytest.importorskip("jax", reason=f"JAX is not installed; {INSTALL}")
