"""Experiments are packages found without a list to edit; the shared lab code knows none of them by name; each
runs with its own thread count."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

from bnlab.lab import registry
from bnlab.lab.registry import experiment_names, get_experiment
from bnlab.lab.runner import make_config, run_experiment
from lab.toy import with_toy

LAB = Path(registry.__file__).parent

PACKAGE = '''
from bnlab.lab.registry import Experiment
from lab.toy import TOY
import dataclasses
EXPERIMENT = dataclasses.replace(TOY, name={name!r})
'''


def fake_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packages: dict[str, str]) -> None:
    """A package ``fakeexps`` with one sub-package per entry (name → __init__.py text), as the registry's root."""
    root = tmp_path / "fakeexps"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in packages.items():
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(text)
    (root / "helpers.py").write_text("")  # a module, not a package: not an experiment
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "EXPERIMENTS_PACKAGE", "fakeexps")
    monkeypatch.setattr(registry, "_EXPERIMENTS", {})
    for module in [m for m in sys.modules if m.startswith("fakeexps")]:
        monkeypatch.delitem(sys.modules, module)


def test_the_experiments_are_found() -> None:
    names = experiment_names()
    assert {"fig1", "variance"} <= set(names) and names.index("fig1") < names.index("variance")
    assert get_experiment("variance").config_cls.__name__ == "VarianceConfig"


def test_a_new_package_is_found_without_editing_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_experiments(tmp_path, monkeypatch, {"alpha": PACKAGE.format(name="alpha"),
                                             "beta": PACKAGE.format(name="beta")})
    assert experiment_names() == ["alpha", "beta"]


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("X = 1\n", "defines no EXPERIMENT", id="no-experiment"),
    pytest.param(PACKAGE.format(name="other"), "is named 'other'; name it 'gamma'", id="name-mismatch"),
])
def test_a_package_that_is_not_an_experiment_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                                     message: str) -> None:
    fake_experiments(tmp_path, monkeypatch, {"gamma": text})
    with pytest.raises(TypeError, match=message):
        experiment_names()


def test_shared_lab_code_names_no_experiment() -> None:
    """Names, colours and settings belong to each experiment's package; the shared code must not know them."""
    shared = [p for p in LAB.rglob("*.py") if "experiments" not in p.parts]
    names = experiment_names()
    for path in shared:
        text = path.read_text()
        for name in names:
            assert not re.search(rf"\b{name}\b", text), f"{path.name} names the experiment {name!r}"


def test_each_experiment_checks_its_quick_and_smoke_settings() -> None:
    for name in experiment_names():
        experiment = get_experiment(name)
        make_config(experiment, quick=True)
        make_config(experiment, smoke=True)
        assert experiment.threads >= 1 and experiment.summary


@pytest.mark.parametrize(("own", "asked", "expected"), [
    pytest.param(1, None, 1, id="its-own"),
    pytest.param(2, None, 2, id="its-own-two"),
    pytest.param(2, 1, 1, id="asked-for"),
])
def test_each_experiment_runs_with_its_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: int,
                                                    asked: int | None, expected: int) -> None:
    if expected > (os.cpu_count() or 1):
        pytest.skip("this machine has fewer CPUs than the case needs")
    from lab import toy

    seen: list[int] = []

    def train(config: toy.ToyConfig, ctx: object) -> None:
        seen.append(torch.get_num_threads())
        toy.train(config, ctx)  # type: ignore[arg-type]

    experiment = with_toy(monkeypatch, train=train, threads=own)
    before = torch.get_num_threads()
    run_experiment(experiment, make_config(experiment), out_root=tmp_path, device="cpu", threads=asked)
    assert set(seen) == {expected} and torch.get_num_threads() == before
