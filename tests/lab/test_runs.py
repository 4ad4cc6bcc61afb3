"""Runs end to end: a smoke run of every registered experiment, the run's files, the report rebuilt from files
alone, the runs index, and interrupted runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bnlab.lab import engine, records
from bnlab.lab.records import RunFilesError, read_metrics
from bnlab.lab.registry import RunSetupError, experiment_names, get_experiment
from bnlab.lab.report import build_report, write_index
from bnlab.lab.runner import make_config, run_experiment

RUN_FILES = ("config.json", "env.json", "metrics.jsonl", "result.json", "report.html")
VERDICTS = {"reproduced", "not reproduced", "not judged", "reported"}


def figures_of(run_dir: Path) -> list[str]:
    return sorted(p.stem for p in run_dir.glob("*.png"))


@pytest.mark.parametrize("name", experiment_names())
def test_smoke_run_of_every_experiment(name: str, tmp_path: Path) -> None:
    experiment = get_experiment(name)
    config = make_config(experiment, smoke=True)
    assert getattr(config, "dataset", "synthetic") == "synthetic", "smoke settings must use synthetic data"
    run_dir = run_experiment(experiment, config, out_root=tmp_path, seeds=(0,), device="cpu", progress=False)
    assert run_dir.parent == tmp_path / name
    for file in RUN_FILES:
        assert (run_dir / file).is_file(), file
    result = json.loads((run_dir / "result.json").read_text())
    assert result["claims"] and all(c["verdict"] in VERDICTS for c in result["claims"])
    stems = figures_of(run_dir)
    assert stems and all((run_dir / f"{s}.svg").is_file() for s in stems)
    assert run_dir.name in (tmp_path / "index.html").read_text()


def test_run_files(fig1_run: Path) -> None:
    meta = json.loads((fig1_run / "config.json").read_text())
    assert meta["experiment"] == "fig1" and meta["seeds"] == [0, 1] and meta["config"]["dataset"] == "synthetic"
    env = json.loads((fig1_run / "env.json").read_text())
    assert {"torch", "python", "device", "git", "batch_norm_backends"} <= set(env)
    records = read_metrics(fig1_run / "metrics.jsonl")
    ends = [r for r in records if r["kind"] == "end"]
    assert sorted((r["seed"], r["model"]) for r in ends) == [(0, "baseline"), (0, "bn"), (1, "baseline"), (1, "bn")]
    steps = sorted({r["step"] for r in records if r["kind"] == "eval"})
    assert steps == [0, 20, 40, 60]


def test_report_is_rebuilt_from_files_alone(fig1_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "fig1" / fig1_run.name
    shutil.copytree(fig1_run, copy)
    original = json.loads((copy / "result.json").read_text())
    for path in [*copy.glob("*.png"), *copy.glob("*.svg"), copy / "report.html", copy / "result.json"]:
        path.unlink()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilding a report must not train")

    monkeypatch.setattr(engine, "train", no_training)
    page = build_report(copy)
    assert json.loads((copy / "result.json").read_text()) == original
    assert figures_of(copy) == figures_of(fig1_run)
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(figures_of(copy))
    for claim in original["claims"]:
        assert claim["verdict"] in html


def test_index_lists_runs_newest_first(fig1_run: Path, tmp_path: Path) -> None:
    for name in ("20250101-000000", "20250102-000000"):
        shutil.copytree(fig1_run, tmp_path / "fig1" / name)
    (tmp_path / "fig1" / "20250103-000000").mkdir()
    (tmp_path / "fig1" / "20250103-000000" / "config.json").write_text("{broken")
    html = write_index(tmp_path).read_text()
    assert html.index("20250102-000000") < html.index("20250101-000000")
    assert "20250103-000000" not in html  # a damaged run is left out, not a crash
    assert 'href="fig1/20250101-000000/report.html"' in html


def test_interrupted_run_keeps_its_measurements(fig1_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(fig1_run, copy)
    (copy / "result.json").unlink()
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    # Stopped in the middle of seed 1's BN network (after its evaluation at step 20), while writing a line.
    first = next(i for i, line in enumerate(lines)
                 if '"kind": "eval"' in line and '"seed": 1' in line and '"model": "bn"' in line)
    (copy / "metrics.jsonl").write_text("\n".join(lines[: first + 2]) + "\n" + lines[first + 2][:25])
    build_report(copy)
    result = json.loads((copy / "result.json").read_text())
    assert result["summary"]["seeds"] == [0] and not result["complete"]
    assert result["incomplete"] == "seed 1: bn stopped at step 20 of 60 (interrupted)"
    assert "Incomplete run" in (copy / "report.html").read_text()

    baseline_only = [line for line in lines if '"model": "baseline"' in line and '"unit"' not in line]
    (copy / "metrics.jsonl").write_text("\n".join(baseline_only) + "\n")
    build_report(copy)
    result = json.loads((copy / "result.json").read_text())
    assert {c["verdict"] for c in result["claims"]} == {"not judged"}
    assert "bn never started" in result["incomplete"]

    (copy / "metrics.jsonl").write_text("")
    with pytest.raises(RunFilesError, match="no evaluation"):
        build_report(copy)


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param("config.json", "config.json is missing", id="no-config"),
    pytest.param("metrics.jsonl", "metrics.jsonl is missing", id="no-metrics"),
])
def test_report_of_a_damaged_run(fig1_run: Path, tmp_path: Path, damage: str, message: str) -> None:
    copy = tmp_path / "run"
    shutil.copytree(fig1_run, copy)
    (copy / damage).unlink()
    with pytest.raises(RunFilesError, match=message):
        build_report(copy)


def test_run_arguments_are_checked(tmp_path: Path) -> None:
    experiment = get_experiment("fig1")
    config = make_config(experiment, smoke=True)
    with pytest.raises(RunSetupError, match="seeds must differ"):
        run_experiment(experiment, config, out_root=tmp_path, seeds=(1, 1))
    with pytest.raises(RunSetupError, match="at least one seed"):
        run_experiment(experiment, config, out_root=tmp_path, seeds=())
    with pytest.raises(RunSetupError, match="choose auto, cpu or cuda"):
        run_experiment(experiment, config, out_root=tmp_path, device="tpu")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        run_experiment(experiment, make_config(experiment, smoke=True, overrides={"dataset": "fashion-mnist"}),
                       out_root=tmp_path, data_dir=str(tmp_path / "empty"))
    assert list(tmp_path.iterdir()) == []  # nothing is written for a refused run


def test_same_seed_same_measurements(tmp_path: Path) -> None:
    experiment = get_experiment("fig1")
    config = make_config(experiment, smoke=True)

    def evals(run_dir: Path) -> list[dict[str, object]]:
        return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]

    a, b = (run_experiment(experiment, config, out_root=tmp_path / name, seeds=(5,), device="cpu",
                           deterministic=True, progress=False) for name in ("a", "b"))
    assert evals(a) == evals(b)
    assert json.loads((a / "config.json").read_text())["deterministic"] is True


def test_report_always_resummarizes(fig1_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(fig1_run, copy)
    original = json.loads((copy / "result.json").read_text())
    stale = {**original, "claims": [{**c, "verdict": "stale verdict"} for c in original["claims"]]}
    (copy / "result.json").write_text(json.dumps(stale))
    build_report(copy)
    assert json.loads((copy / "result.json").read_text()) == original  # from metrics.jsonl, not the old file
    assert "stale verdict" not in (copy / "report.html").read_text()


@pytest.mark.parametrize(("config", "listed"), [
    pytest.param({"experiment": "fig1", "config": {"steps": "x"}}, True, id="steps-not-a-number"),
    pytest.param({"experiment": "fig1", "config": {"steps": True}}, True, id="steps-a-bool"),
    pytest.param({"experiment": "fig1", "config": [1]}, False, id="config-a-list"),
    pytest.param([1], False, id="file-a-list"),
    pytest.param({"experiment": ["fig1"], "seeds": 3}, False, id="wrong-types"),
])
def test_index_survives_a_config_of_the_wrong_shape(fig1_run: Path, tmp_path: Path, config: object,
                                                    listed: bool) -> None:
    shutil.copytree(fig1_run, tmp_path / "fig1" / "20250101-000000")
    odd = tmp_path / "fig1" / "20250102-000000"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps(config))
    html = write_index(tmp_path).read_text()
    assert "20250101-000000" in html and ("20250102-000000" in html) == listed


@pytest.mark.parametrize("config", [
    pytest.param([1], id="a-list"),
    pytest.param({"experiment": "fig1", "config": [1]}, id="config-a-list"),
    pytest.param({"experiment": "fig1"}, id="no-config"),
])
def test_report_of_a_config_of_the_wrong_shape(fig1_run: Path, tmp_path: Path, config: object) -> None:
    copy = tmp_path / "run"
    shutil.copytree(fig1_run, copy)
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFilesError, match=r"config\.json is damaged: .*bnlab run") as info:
        build_report(copy)
    assert "list indices" not in str(info.value)


def test_git_revision_only_from_a_bnlab_checkout(tmp_path: Path) -> None:
    module = tmp_path / "src" / "bnlab" / "lab" / "records.py"  # as in a checkout, or site-packages' 3 levels up
    assert records.source_checkout(module) is None  # no pyproject.toml: an installed copy
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other-project"\n')
    assert records.source_checkout(module) is None  # whatever repo encloses the install is not ours
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "bnlab"\nversion = "0"\n')
    assert records.source_checkout(module) == tmp_path
    assert records.source_checkout(Path(records.__file__)) is not None  # the tests run from the checkout


def test_a_run_made_before_units_were_recorded_is_judged_as_before(fig1_run: Path, tmp_path: Path) -> None:
    """Runs written by earlier versions (no unit, point, grid or threads) still build their report unchanged."""
    copy = tmp_path / "fig1" / "old"
    shutil.copytree(fig1_run, copy)
    original = json.loads((copy / "result.json").read_text())
    lines = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    old = [{k: v for k, v in r.items() if k != "point"} for r in lines if not r["kind"].startswith("unit_")]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    meta = json.loads((copy / "config.json").read_text())
    for key in ("grid", "threads"):
        meta.pop(key)
    (copy / "config.json").write_text(json.dumps(meta))
    build_report(copy)
    assert json.loads((copy / "result.json").read_text()) == original
