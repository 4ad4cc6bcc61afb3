"""The package root: every public name works, and ``import bnlab`` imports them (and torch) only on first use."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import bnlab

NAMES = [pytest.param(name, id=name) for name in bnlab.__all__]


@pytest.mark.parametrize("name", NAMES)
def test_every_public_name_resolves_to_what_its_module_defines(name: str) -> None:
    value = getattr(bnlab, name)
    if isinstance(value, types.ModuleType):
        assert value.__name__ == f"bnlab.{name}" and sys.modules[value.__name__] is value
    elif name != "__version__":
        home = sys.modules[value.__module__]
        assert value.__module__.startswith("bnlab.") and getattr(home, name) is value
    assert name in dir(bnlab)


def test_a_fresh_import_is_light_and_star_import_gives_all() -> None:
    code = (
        "import sys\n"
        "import bnlab\n"
        "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "namespace = {}\n"
        "exec('from bnlab import *', namespace)\n"
        "missing = sorted(set(bnlab.__all__) - set(namespace))\n"
        "print(heavy, missing, type(namespace['BatchNorm2d'](3)).__name__, bnlab.fold.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]", "BatchNorm2d", "bnlab.tools.fold"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'bnlab' has no attribute 'BatchNorm4d'"):
        bnlab.BatchNorm4d  # noqa: B018
