"""E5 ``dcgan_modes``: the verdicts against hand-made records (each threshold met and missed), the records'
schema, and the report of a smoke run as Chromium renders it (its image grids included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bnlab.lab.experiments.dcgan_modes import DcganConfig, claims
from bnlab.lab.experiments.dcgan_modes.config import MODES
from bnlab.lab.experiments.dcgan_modes.config import records as record_schema
from bnlab.lab.experiments.dcgan_modes.plots import GENERATOR_COLORS, MODE_COLORS, mosaic
from bnlab.lab.registry import get_experiment
from bnlab.lab.runner import make_config, run_experiment
from bnlab.lab.schema import why_wrong
from bnlab.lab.store import SharedCache
from lab.chromium import check_report

EVEN = [100] * 10  # ten classes, 10% each


def mode(seed: int, generator: str, name: str, confidence: float = 0.9, inception: float = 6.0,
         frechet: float | None = 10.0, histogram: list[int] | None = None) -> dict[str, Any]:
    return {"kind": "mode", "seed": seed, "generator": generator, "mode": name, "confidence": confidence,
            "inception_score": inception, "frechet": frechet, "histogram": histogram or EVEN, "samples": 1000}


def run_records(accuracy: float = 0.9, seeds: tuple[int, ...] = (0,), generators: tuple[str, ...] = ("bn", "plain"),
                **changes: dict[str, Any]) -> list[dict[str, Any]]:
    """A run where every claim holds; ``changes`` maps "seed/generator/mode" to fields to change."""
    records: list[dict[str, Any]] = []
    for seed in seeds:
        records.append({"kind": "classifier", "seed": seed, "dataset": "fashion-mnist", "test_accuracy": accuracy,
                        "made": seed == 0, "seconds": 60.0, "classes": 10})
        records.append({**mode(seed, "bn", "train", 0.95, 8.0, 2.0), "kind": "real"})
        records[-1].pop("generator")
        records[-1].pop("mode")
        for gen in generators:
            for step in range(10, 110, 10):
                records.append({"kind": "losses", "seed": seed, "generator": gen, "step": step,
                                "train_loss_d": 1.0 if gen == "bn" else 0.8, "train_loss_g": 1.5 if gen == "bn"
                                else 2.0, "train_d_real": 0.7, "train_d_fake": 0.3})
            records.append({"kind": "end", "seed": seed, "generator": gen, "steps": 100, "diverged": False,
                            "seconds": 5.0})
            for name in MODES:
                record = mode(seed, gen, name)
                record.update(changes.get(f"{seed}/{gen}/{name}", {}))
                records.append(record)
            depends = gen == "bn"
            records.append({"kind": "batch", "seed": seed, "generator": gen, "mode": "train",
                            "max_abs_diff": 0.2 if depends else 0.0, "identical": not depends,
                            **changes.get(f"{seed}/{gen}/batch-train", {})})
            records.append({"kind": "batch", "seed": seed, "generator": gen, "mode": "eval", "max_abs_diff": 0.0,
                            "identical": True, **changes.get(f"{seed}/{gen}/batch-eval", {})})
            if gen == "bn":
                records.append({"kind": "doctor", "seed": seed, "generator": gen, "summary": "no findings",
                                "text": "bnlab doctor: ...\nno findings", "healthy": True, "findings": []})
    return records


def verdicts(records: list[dict[str, Any]], config: DcganConfig | None = None) -> list[str]:
    return [c.verdict for c in claims.summarize(config or DcganConfig(), records).claims]


ALL_HOLD = ["reproduced", "reproduced", "reproduced", "reproduced", "reported", "reported", "reported"]


def test_every_claim_holds_on_a_good_run() -> None:
    records = run_records(seeds=(0, 1))
    schema = record_schema(DcganConfig(steps=100))
    assert all(why_wrong(r, schema) is None for r in records)
    assert verdicts(records) == ALL_HOLD
    result = claims.summarize(DcganConfig(), records)
    assert claims.headline(result) == {"IS train": "6.00", "IS eval": "6.00", "IS recalibrated": "6.00"}
    assert result.complete


@pytest.mark.parametrize(("changes", "index"), [
    pytest.param({"0/bn/train": {"confidence": 0.79}}, 0, id="train-confidence-below-0.8"),
    pytest.param({"0/bn/train": {"histogram": [300, 300, 300, 25, 25, 25, 25, 0, 0, 0]}}, 0,
                 id="train-three-classes-used"),
    pytest.param({"1/bn/recalibrated": {"confidence": 0.5}}, 1, id="recalibrated-second-seed"),
    pytest.param({"0/bn/batch-train": {"max_abs_diff": 0.0009, "identical": False}}, 2, id="train-diff-below-1e-3"),
    pytest.param({"0/bn/batch-eval": {"max_abs_diff": 1e-7, "identical": False}}, 2, id="eval-not-bit-identical"),
    pytest.param({"0/bn/recalibrated": {"inception": 5.39}}, 3, id="recalibrated-is-10pct-below"),
    pytest.param({"0/bn/recalibrated": {"inception_score": 6.61}}, 3, id="recalibrated-is-10pct-above"),
    pytest.param({"0/bn/recalibrated": {"frechet": 12.6}}, 3, id="recalibrated-fd-above-1.25x"),
])
def test_a_missed_threshold_fails_its_claim(changes: dict[str, Any], index: int) -> None:
    fixed = {k: {("inception_score" if f == "inception" else f): v for f, v in c.items()} for k, c in changes.items()}
    got = verdicts(run_records(seeds=(0, 1), **fixed))
    expected = list(ALL_HOLD)
    expected[index] = "not reproduced"
    assert got == expected


@pytest.mark.parametrize(("changes", "holds"), [
    pytest.param({"confidence": 0.8, "histogram": [30] * 6 + [29, 29, 29, 733]}, False, id="seven-classes-at-3pct"),
    pytest.param({"confidence": 0.8, "histogram": [30] * 7 + [0, 0, 790]}, True, id="eight-classes-at-3pct"),
])
def test_recognisable_at_the_edges(changes: dict[str, Any], holds: bool) -> None:
    got = verdicts(run_records(**{"0/bn/train": changes}))
    assert got[0] == ("reproduced" if holds else "not reproduced")


def test_a_weak_classifier_judges_no_sample() -> None:
    got = verdicts(run_records(accuracy=0.87))
    assert got[0] == got[1] == got[3] == "not judged"
    assert got[2] == "reproduced"  # the batch test needs no classifier
    evidence = claims.summarize(DcganConfig(), run_records(accuracy=0.87)).claims[0].evidence
    assert "87.00%" in evidence and "88%" in evidence


def test_the_raw_gap_and_the_gap_closed_are_reported() -> None:
    records = run_records(**{"0/bn/eval": {"frechet": 50.0, "inception_score": 2.0, "confidence": 0.3}})
    result = claims.summarize(DcganConfig(), records)
    assert [c.verdict for c in result.claims] == ALL_HOLD
    assert "worse" in result.claims[4].evidence
    assert "of the raw eval-mode FD gap 40, 100% closed" in result.claims[3].evidence


def test_no_raw_gap_is_said_to_leave_nothing_to_close() -> None:
    result = claims.summarize(DcganConfig(), run_records(**{"0/bn/eval": {"frechet": 12.0}}))
    assert result.claims[3].verdict == "reproduced"
    assert "no gap for recalibration to close" in result.claims[3].evidence
    assert "same quality by claim 4's tolerances" in result.claims[4].evidence


def test_one_generator_leaves_seed_000s_comparison_unjudged() -> None:
    config = DcganConfig(generators=("bn",))
    result = claims.summarize(config, run_records(generators=("bn",)))
    assert [c.verdict for c in result.claims] == [*ALL_HOLD[:5], "not judged", "reported"]
    assert "did not train both generators" in result.claims[5].evidence


def test_seed_000_evidence_gives_both_generators_final_losses() -> None:
    evidence = claims.summarize(DcganConfig(), run_records()).claims[5].evidence
    assert "generator with BN" in evidence and "final D loss 1.000, G loss 1.500" in evidence
    assert "generator without BN" in evidence and "final D loss 0.800, G loss 2.000" in evidence


def test_an_unfinished_generator_marks_the_run_incomplete() -> None:
    records = [r for r in run_records() if r.get("generator") != "plain"]
    result = claims.summarize(DcganConfig(), records)
    assert not result.complete and "seed 0 plain" in (result.incomplete or "")
    assert result.claims[5].verdict == "not judged" and "not finished both generators" in result.claims[5].evidence


def test_the_doctors_findings_become_a_table() -> None:
    records = run_records()
    finding = {"kind": "running statistics have not converged", "severity": "warning", "layer": "1",
               "measure": "initial value left", "value": 0.28, "detail": "12 batch(es)", "fix": "recalibrate"}
    for r in records:
        if r["kind"] == "doctor":
            r.update(summary="1 problem(s): ...", healthy=False, findings=[finding])
    result = claims.summarize(DcganConfig(), records)
    table = next(t for t in result.tables if t.title.startswith("bnlab doctor"))
    assert table.rows == [["running statistics have not converged", "warning", "1", "initial value left: 0.28",
                           "12 batch(es)", "recalibrate"]]
    assert table.note == "1 problem(s): ..." and result.summary["doctor"]["0"].startswith("bnlab doctor")


def test_mosaic_places_images_row_by_row() -> None:
    import numpy as np

    images = np.stack([np.full((2, 3), i, dtype=np.uint8) for i in range(5)])
    out = mosaic(images, columns=2, gap=1)
    assert out.shape == (3 * 3 - 1, 2 * 4 - 1)
    assert out[0, 0] == 0 and out[0, 4] == 1 and out[3, 0] == 2 and out[6, 0] == 4 and out[6, 4] == 128


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = get_experiment("dcgan_modes")
    root = tmp_path_factory.mktemp("runs")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=root, seeds=(0,), device="cpu",
                          progress=False, shared=SharedCache(root / "cache"))


def test_smoke_run_judges_every_claim(smoke_run: Path) -> None:
    import json

    result = json.loads((smoke_run / "result.json").read_text())
    assert [c["verdict"] for c in result["claims"]][2] == "reproduced"  # batch dependence: no classifier needed
    assert sorted(p.stem for p in smoke_run.glob("*.png")) == ["dcgan_batch", "dcgan_losses", "dcgan_reference",
                                                               "dcgan_samples", "dcgan_scores"]


def test_report_renders(smoke_run: Path, tmp_path: Path) -> None:
    check_report(smoke_run, tmp_path, {"BN generator's loss curves": GENERATOR_COLORS["bn"],
                                       "no-BN generator's loss curves": GENERATOR_COLORS["plain"],
                                       "eval-mode bars": MODE_COLORS["eval"],
                                       "recalibrated bars": MODE_COLORS["recalibrated"]},
                 name="dcgan_modes.png", height=4500)
