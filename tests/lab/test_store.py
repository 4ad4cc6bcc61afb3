"""Artifacts beside a run's JSON, and the cache shared across runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab.runner import make_config, run_experiment
from bnlab.lab.store import CACHE_ENV, Artifacts, SharedCache, default_cache_dir
from lab.toy import with_toy


def test_arrays_and_torch_objects_round_trip(tmp_path: Path) -> None:
    store = Artifacts(tmp_path)
    counts = np.arange(12, dtype=np.float64).reshape(3, 4)
    store.save_arrays("hist-tanh", counts=counts, edges=np.linspace(-1, 1, 5))
    weights = {"weight": torch.randn(3, 2), "steps": 7}
    store.save_torch("classifier", weights)
    loaded = store.load_arrays("hist-tanh")
    assert np.array_equal(loaded["counts"], counts) and loaded["edges"].shape == (5,)
    back = store.load_torch("classifier")
    assert torch.equal(back["weight"], weights["weight"]) and back["steps"] == 7
    assert store.names() == ["classifier.pt", "hist-tanh.npz"]  # no temporary file left behind


@pytest.mark.parametrize("name", [pytest.param("../escape", id="parent"), pytest.param("a/b", id="folder"),
                                  pytest.param(".hidden", id="hidden"), pytest.param("", id="empty")])
def test_names_stay_inside_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="no folders"):
        Artifacts(tmp_path).save_arrays(name, x=np.zeros(1))


def test_missing_and_damaged_artifacts(tmp_path: Path) -> None:
    store = Artifacts(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"hist\.npz is missing"):
        store.load_arrays("hist")
    store.folder.mkdir()
    (store.folder / "hist.npz").write_bytes(b"not a zip")
    (store.folder / "net.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="is damaged"):
        store.load_arrays("hist")
    with pytest.raises(ValueError, match="damaged or not a PyTorch file"):
        store.load_torch("net")


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    store = Artifacts(tmp_path)
    store.folder.mkdir()
    torch.save({"f": print}, store.folder / "evil.pt")  # a callable needs unpickling code
    with pytest.raises(ValueError, match="damaged or not a PyTorch file"):
        store.load_torch("evil")


def test_shared_cache_makes_once_and_reuses(tmp_path: Path) -> None:
    made: list[int] = []

    def make() -> dict[str, torch.Tensor]:
        made.append(1)
        return {"w": torch.full((2,), float(len(made)))}

    first, second = SharedCache(tmp_path), SharedCache(tmp_path)  # two runs, one cache folder
    a = first.get("classifier", {"dataset": "fashion-mnist", "epochs": 2}, make)
    b = second.get("classifier", {"epochs": 2, "dataset": "fashion-mnist"}, make)  # same inputs, any order
    c = second.get("classifier", {"dataset": "fashion-mnist", "epochs": 3}, make)  # other inputs: made again
    assert made == [1, 1] and torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    assert [e["made"] for e in first.events + second.events] == [True, False, True]
    sidecar = json.loads(first.path("classifier", {"dataset": "fashion-mnist", "epochs": 2}).with_suffix(".json")
                         .read_text())
    assert sidecar == {"name": "classifier", "inputs": {"dataset": "fashion-mnist", "epochs": 2}}


def test_a_damaged_cache_entry_is_made_again(tmp_path: Path) -> None:
    cache = SharedCache(tmp_path)
    cache.path("x", {}).parent.mkdir(parents=True, exist_ok=True)
    cache.path("x", {}).write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="is damaged"):
        assert cache.get("x", {}, lambda: torch.ones(1)).item() == 1.0
    assert torch.load(cache.path("x", {}), weights_only=True).item() == 1.0


def test_cache_folder_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "bnlab" / "lab"


def test_runs_share_the_cache_and_keep_their_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an experiment's training sees: its run's artifacts folder and the cache shared with later runs."""
    from lab import toy

    made: list[int] = []

    def train(config: toy.ToyConfig, ctx: object) -> None:
        toy.train(config, ctx)  # type: ignore[arg-type]
        ctx.shared.get("reference", {"v": 1}, lambda: made.append(1) or torch.zeros(1))  # type: ignore[attr-defined]

    experiment = with_toy(monkeypatch, train=train)
    cache = SharedCache(tmp_path / "cache")
    for _ in range(2):
        run = run_experiment(experiment, make_config(experiment), out_root=tmp_path / "runs", device="cpu",
                             shared=cache)
        assert Artifacts(run).names() == ["draws-0-a.npz", "draws-0-b.npz"]
    assert made == [1]  # trained once, reused by the second unit and the second run
    assert "artifacts/</code> (2 files)" in (run / "report.html").read_text()
