"""Units of work, sweeps (a grid axis beside seeds) and resuming an interrupted run where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnlab.lab.config import ConfigError
from bnlab.lab.records import RunFilesError, read_metrics
from bnlab.lab.registry import Experiment, RunSetupError
from bnlab.lab.report import build_report
from bnlab.lab.runner import make_config, parse_grid, resume_run, run_experiment
from lab.toy import CALLS, with_toy


def values(run_dir: Path) -> list[tuple[int, int, str, float]]:
    return [(r["point"], r["seed"], r["part"], r["value"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if r["kind"] == "value"]


def test_grid_is_the_product_of_its_axes(monkeypatch: pytest.MonkeyPatch) -> None:
    toy = with_toy(monkeypatch)
    config = make_config(toy)
    points = parse_grid(toy, config, ["scale=1,2", "parts=a/a,b"])
    assert points == [{"scale": 1.0, "parts": ["a"]}, {"scale": 1.0, "parts": ["a", "b"]},
                      {"scale": 2.0, "parts": ["a"]}, {"scale": 2.0, "parts": ["a", "b"]}]


@pytest.mark.parametrize(("axes", "message"), [
    pytest.param(["scal=1,2"], "--grid expects key=value1,value2 with a setting of toy", id="unknown-setting"),
    pytest.param(["scale"], "--grid expects key=value1,value2", id="no-values"),
    pytest.param(["scale=1,x"], "scale takes a number, got 'x'", id="bad-value"),
    pytest.param(["scale=1,1.0"], "repeats a value", id="repeated-value"),
    pytest.param(["scale=1", "scale=2"], "names 'scale' twice", id="axis-twice"),
    pytest.param(["scale=1,"], "needs at least one value", id="empty-value"),
])
def test_bad_grids(monkeypatch: pytest.MonkeyPatch, axes: list[str], message: str) -> None:
    toy = with_toy(monkeypatch)
    with pytest.raises(ConfigError, match=message):
        parse_grid(toy, make_config(toy), axes)


def test_sweep_runs_every_point_seed_and_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = with_toy(monkeypatch)
    run = run_experiment(toy, make_config(toy), out_root=tmp_path, seeds=(0, 1), device="cpu",
                         grid=parse_grid(toy, make_config(toy), ["scale=1,3"]))
    assert CALLS == [(0, "a", 1.0), (0, "b", 1.0), (1, "a", 1.0), (1, "b", 1.0),
                     (0, "a", 3.0), (0, "b", 3.0), (1, "a", 3.0), (1, "b", 3.0)]
    result = json.loads((run / "result.json").read_text())
    assert [p["settings"] for p in result["points"]] == [{"scale": 1.0}, {"scale": 3.0}]
    sweep = result["tables"][0]
    assert sweep["columns"] == ["point", "scale", "mean", "verdicts"] and len(sweep["rows"]) == 2
    # A unit's draw depends on its seed alone: the same at both points, scaled.
    first = {(s, p): v for point, s, p, v in values(run) if point == 0}
    second = {(s, p): v for point, s, p, v in values(run) if point == 1}
    assert second == pytest.approx({k: 3 * v for k, v in first.items()})
    assert (run / "point-1" / "artifacts" / "draws-1-b.npz").is_file() and (run / "point-0" / "toy.png").is_file()
    html = (run / "report.html").read_text()
    assert 'id="point-1"' in html and "scale = 3.0" in html and html.count("data:image/png") == 2


def test_a_bad_point_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = with_toy(monkeypatch)
    with pytest.raises(RunSetupError, match="a sweep point is not a valid configuration"):
        run_experiment(toy, make_config(toy), out_root=tmp_path, grid=[{"scale": 1.0}, {"scale": "x"}])
    assert list(tmp_path.iterdir()) == [] and CALLS == []


def interrupt_after(monkeypatch: pytest.MonkeyPatch, units: int) -> Experiment:
    """Make the toy's training raise KeyboardInterrupt in the middle of unit number ``units`` + 1 (after its record)."""
    from lab import toy

    def train(config: toy.ToyConfig, ctx: object) -> None:
        toy.train(config, ctx)  # type: ignore[arg-type]
        if len(CALLS) == units + 1:
            raise KeyboardInterrupt

    return with_toy(monkeypatch, train=train)


def test_resume_continues_where_it_stopped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = with_toy(monkeypatch)
    whole = run_experiment(toy, make_config(toy), out_root=tmp_path / "whole", seeds=(0, 1), device="cpu",
                           grid=[{"scale": 1.0}, {"scale": 2.0}])
    cutting = interrupt_after(monkeypatch, 4)  # stops inside point 1, seed 0, unit a: record written, not its end
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cutting, make_config(toy), out_root=tmp_path / "cut", seeds=(0, 1), device="cpu",
                       grid=[{"scale": 1.0}, {"scale": 2.0}])
    (cut,) = (tmp_path / "cut" / "toy").iterdir()
    assert not (cut / "result.json").exists() and len(values(cut)) == 5
    with_toy(monkeypatch)
    resume_run(cut)
    assert CALLS == [(0, "a", 2.0), (0, "b", 2.0), (1, "a", 2.0), (1, "b", 2.0)]  # only what was not done
    assert values(cut) == values(whole)  # the interrupted unit's record was dropped, then measured again
    assert json.loads((cut / "result.json").read_text())["complete"]
    env = json.loads((cut / "env.json").read_text())
    assert len(env["resumed"]) == 1


def test_resume_of_a_finished_run_only_rebuilds_its_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = with_toy(monkeypatch)
    run = run_experiment(toy, make_config(toy), out_root=tmp_path, device="cpu")
    CALLS.clear()
    (run / "report.html").unlink()
    resume_run(run)
    assert CALLS == [] and (run / "report.html").is_file()


def test_resume_refuses_what_it_cannot_continue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = with_toy(monkeypatch)
    run = run_experiment(toy, make_config(toy), out_root=tmp_path, device="cpu")
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"unit_' not in line]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # as a run made before units were recorded
    with pytest.raises(RunFilesError, match="records no unit of work"):
        resume_run(run)
    with pytest.raises(RunFilesError, match="is not a folder"):
        resume_run(tmp_path / "nothing")


def test_an_interrupted_sweep_is_judged_on_what_finished(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cutting = interrupt_after(monkeypatch, 2)  # point 1 never finishes a unit
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cutting, make_config(cutting), out_root=tmp_path, device="cpu",
                       grid=[{"scale": 1.0}, {"scale": 2.0}])
    (run,) = (tmp_path / "toy").iterdir()
    build_report(run)
    result = json.loads((run / "result.json").read_text())
    assert not result["complete"] and "point 1" in result["incomplete"]
    point0, point1 = (p["result"] for p in result["points"])
    assert point0["complete"] and len(point0["tables"][0]["rows"]) == 2  # point 0 judged on its two units
    assert point1["tables"][0]["rows"] == [["a", pytest.approx(values(run)[-1][3])]]  # what point 1 measured
