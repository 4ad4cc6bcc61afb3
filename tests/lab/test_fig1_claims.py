"""Figure 1's verdicts on hand-made measurements: each claim's rule, mean ± spread over seeds, and runs that are
incomplete (interrupted in the middle of a network) or where a network diverged."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from bnlab.lab.experiments.fig1 import Fig1Config
from bnlab.lab.experiments.fig1 import claims as fig1_claims


def summarize(config: Fig1Config, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The result in its JSON form (what result.json holds)."""
    return fig1_claims.summarize(config, recs).to_json()


STEPS = [0, 1000, 2000, 3000, 4000]
CONFIG = Fig1Config(steps=4000, eval_every=1000, hidden=4)
PAPER_LIKE = {"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .8, .9, .95, .96]}
STABLE_BN = {"baseline": 1.0, "bn": 0.1}


def records(acc: dict[str, list[float]], spread: dict[str, float], steps: list[int] = STEPS, *, seed: int = 0,
            scales: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """One seed's records. Each unit's 15th/85th percentiles are ramps ∓spread·scale·i (i: evaluation index),
    its median 0.1·i, so a unit's drift grows with ``spread[model] · scales[model][unit]``."""
    out: list[dict[str, Any]] = []
    for model, curve in acc.items():
        scale = (scales or {}).get(model, [1.0] * 4)
        for i, (step, a) in enumerate(zip(steps, curve, strict=True)):
            width = spread[model] * i
            out.append({"kind": "eval", "seed": seed, "model": model, "step": step, "test_accuracy": a,
                        "train_loss": None, "p15": [-width * s for s in scale], "p50": [0.1 * i] * len(scale),
                        "p85": [width * s for s in scale]})
        out.append({"kind": "end", "seed": seed, "model": model, "steps": steps[-1], "diverged": False, "seconds": 1})
    return out


def cut_after(recs: list[dict[str, Any]], seed: int, model: str, step: int) -> list[dict[str, Any]]:
    """The records up to ``model``'s evaluation at ``step`` in ``seed``: the run was stopped right there."""
    at = next(i for i, r in enumerate(recs)
              if r["kind"] == "eval" and (r["seed"], r["model"], r["step"]) == (seed, model, step))
    return recs[: at + 1]


def diverge_at(recs: list[dict[str, Any]], seed: int, model: str, step: int) -> list[dict[str, Any]]:
    """``model`` in ``seed`` diverged at ``step``: its loss was not finite, its last percentiles NaN (null)."""
    out = []
    for r in recs:
        mine = r.get("seed") == seed and r["model"] == model
        if mine and r["kind"] == "eval" and r["step"] > step:
            continue
        if mine and r["kind"] == "eval" and r["step"] == step:
            r = {**r, "test_accuracy": 0.1, "p15": [None] * 4, "p50": [None] * 4, "p85": [None] * 4}
        if mine and r["kind"] == "end":
            r = {**r, "steps": step, "diverged": True}
        out.append(r)
    return out


def verdicts(recs: list[dict[str, Any]], config: Fig1Config = CONFIG) -> list[str]:
    return [c["verdict"] for c in summarize(config, recs)["claims"]]


CASES = [
    pytest.param(PAPER_LIKE, STABLE_BN, ["reproduced"] * 3, id="paper-like"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .8, .85, .88, .899]}, STABLE_BN,
                 ["not reproduced", "reproduced", "reproduced"], id="bn-never-reaches-final-but-within-0.2"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .4, .9, .95, .96]}, STABLE_BN,
                 ["not reproduced", "reproduced", "reproduced"], id="bn-slower-at-1000"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .4, .6, .9, .897]}, {"baseline": 0.1, "bn": 1.0},
                 ["not reproduced", "not reproduced", "not reproduced"], id="bn-worse-and-drifting"),
]


@pytest.mark.parametrize(("acc", "spread", "expected"), CASES)
def test_verdicts_follow_the_numbers(acc: dict[str, list[float]], spread: dict[str, float],
                                     expected: list[str]) -> None:
    assert verdicts(records(acc, spread)) == expected


STABILITY = [
    # Paired units: BN lower in exactly half of them, though its median is far lower.
    pytest.param({"baseline": [1.0] * 4, "bn": [0.1, 0.1, 1.05, 1.05]}, id="lower-median-but-only-half-the-units"),
    # BN lower in 4 of 5 units, but its median is higher.
    pytest.param({"baseline": [0.1, 0.2, 3, 4, 5], "bn": [0.05, 0.15, 3.5, 3.9, 4.9]},
                 id="most-units-but-higher-median"),
]


@pytest.mark.parametrize("scales", STABILITY)
def test_stability_needs_a_lower_median_and_most_units(scales: dict[str, list[float]]) -> None:
    result = summarize(CONFIG, records(PAPER_LIKE, {"baseline": 1.0, "bn": 1.0}, scales=scales))
    assert [c["verdict"] for c in result["claims"]] == ["reproduced", "reproduced", "not reproduced"]
    base, bn = result["summary"]["drift_median"]["baseline"], result["summary"]["drift_median"]["bn"]
    share = result["summary"]["drift_share_of_units_bn_lower"]
    assert (bn < base) != (share > 0.5)  # exactly one of the two conditions holds


def test_mean_and_spread_over_seeds() -> None:
    finals = {"baseline": [.90, .92, .94], "bn": [.95, .96, .97]}
    recs = []
    for seed in range(3):
        acc = {m: [.1, .5, .7, .8, finals[m][seed]] for m in finals}
        recs += records(acc, STABLE_BN, seed=seed)
    result = summarize(CONFIG, recs)
    assert result["summary"]["seeds"] == [0, 1, 2] and result["complete"]
    assert result["summary"]["final_accuracy"] == pytest.approx({"baseline": .92, "bn": .96})
    assert result["summary"]["final_accuracy_spread"] == pytest.approx({"baseline": .02, "bn": .01})
    assert "BN 96.00% ± 1.00 vs baseline 92.00% ± 2.00" in result["claims"][1]["evidence"]
    assert result["tables"][0]["title"] == "Test accuracy (mean ± std over seeds)"
    assert result["tables"][0]["rows"][-1] == ["4,000", "92.00% ± 2.00", "96.00% ± 1.00"]


def test_zero_spread_is_shown_with_several_seeds() -> None:
    recs = records(PAPER_LIKE, STABLE_BN, seed=0) + records(PAPER_LIKE, STABLE_BN, seed=1)
    assert "BN 96.00% ± 0.00 vs baseline 90.00% ± 0.00" in summarize(CONFIG, recs)["claims"][1]["evidence"]
    assert "±" not in summarize(CONFIG, records(PAPER_LIKE, STABLE_BN))["claims"][1]["evidence"]


def seed1_worse() -> list[dict[str, Any]]:
    """Seed 0 paper-like; seed 1 with BN behind at every step (so averaging it in would change every verdict)."""
    return records(PAPER_LIKE, STABLE_BN, seed=0) + records(
        {"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .3, .4, .5, .6]}, {"baseline": 0.1, "bn": 1.0}, seed=1)


def check_judged_on_seed_0_alone(result: dict[str, Any], why: str) -> None:
    alone = summarize(CONFIG, records(PAPER_LIKE, STABLE_BN, seed=0))
    assert [c["verdict"] for c in result["claims"]] == [c["verdict"] for c in alone["claims"]]
    for key in ("final_accuracy", "accuracy_at", "drift_median", "bn_reaches_baseline_final_at"):
        assert result["summary"][key] == alone["summary"][key], key
    assert result["summary"]["seeds"] == [0] and not result["complete"]
    assert why in result["incomplete"]
    assert all(why in c["evidence"] for c in result["claims"])


@pytest.mark.parametrize(("model", "step", "why"), [
    pytest.param("bn", 2000, "seed 1: bn stopped at step 2,000 of 4,000 (interrupted)", id="bn-cut-after-2000"),
    pytest.param("baseline", 3000, "seed 1: baseline stopped at step 3,000 of 4,000 (interrupted); bn never started",
                 id="baseline-cut-after-3000"),
    pytest.param("baseline", 4000, "seed 1: baseline was interrupted after its last evaluation",
                 id="cut-before-the-end-record"),
])
def test_a_seed_cut_in_the_middle_of_a_network_is_not_judged(model: str, step: int, why: str) -> None:
    result = summarize(CONFIG, cut_after(seed1_worse(), 1, model, step))
    check_judged_on_seed_0_alone(result, why)


def test_a_diverged_seed_is_left_out() -> None:
    result = summarize(CONFIG, diverge_at(seed1_worse(), 1, "baseline", 1000))
    check_judged_on_seed_0_alone(result, "seed 1")
    assert "baseline diverged at step 1,000" in result["incomplete"]
    assert result["summary"]["diverged"] == ["baseline (seed 1)"]
    json.dumps(result, allow_nan=False)  # no NaN left in what is written


def test_a_planned_seed_that_never_started() -> None:
    recs = [{"kind": "plan", "seeds": [0, 1]}, *records(PAPER_LIKE, STABLE_BN, seed=0)]
    result = summarize(CONFIG, recs)
    assert not result["complete"] and "seed 1: never started" in result["incomplete"]
    assert verdicts(recs) == ["reproduced"] * 3


@pytest.mark.parametrize("recs", [
    pytest.param(cut_after(records(PAPER_LIKE, STABLE_BN), 0, "bn", 2000), id="only-seed-cut-in-bn"),
    pytest.param(cut_after(records(PAPER_LIKE, STABLE_BN), 0, "baseline", 4000), id="bn-never-evaluated"),
    pytest.param(diverge_at(records(PAPER_LIKE, STABLE_BN), 0, "bn", 2000), id="only-seed-diverged"),
])
def test_nothing_judged_without_a_finished_seed(recs: list[dict[str, Any]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" and the like
        result = summarize(CONFIG, recs)
    assert [c["verdict"] for c in result["claims"]] == ["not judged"] * 3
    assert all("no seed where baseline and bn finished" in c["evidence"] for c in result["claims"])
    assert not result["complete"] and result["summary"]["seeds"] == []
    json.dumps(result, allow_nan=False)


def test_no_measurement_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no evaluation"):
        summarize(CONFIG, [{"kind": "plan", "seeds": [0]}])


def test_first_claim_not_judged_on_a_short_run() -> None:
    config = Fig1Config(steps=40, eval_every=20, hidden=4)
    recs = records({"baseline": [.1, .2, .3], "bn": [.1, .4, .5]}, {"baseline": 1, "bn": 0.1}, [0, 20, 40])
    assert verdicts(recs, config)[0] == "not judged"


def test_stability_not_judged_on_a_one_evaluation_window() -> None:
    config = Fig1Config(steps=300, eval_every=300, hidden=4)  # evaluated at 0 and 300 only
    recs = records({"baseline": [.1, .5], "bn": [.1, .6]}, {"baseline": 1.0, "bn": 0.1}, [0, 300])
    claim = summarize(config, recs)["claims"][2]
    assert claim["verdict"] == "not judged" and "1 evaluation" in claim["evidence"]


def test_no_ratio_when_the_baseline_does_not_drift() -> None:
    recs = records(PAPER_LIKE, {"baseline": 0.0, "bn": 0.1})
    for r in recs:
        if r["kind"] == "eval" and r["model"] == "baseline":
            r["p50"] = [0.0] * 4
    claim = summarize(CONFIG, recs)["claims"][2]
    assert claim["verdict"] == "not reproduced" and "inf" not in claim["evidence"]


def test_claim_text_follows_the_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fig1_claims, "ACCURACY_MARGIN", 0.005)
    monkeypatch.setattr(fig1_claims, "CLAIM_STEPS", (1000, 3000))
    faster, accuracy, _ = summarize(CONFIG, records(PAPER_LIKE, STABLE_BN))["claims"]
    assert "after 1,000 and 3,000 steps" in faster["claim"] and "after 3,000 steps" in faster["evidence"]
    assert "within 0.5 points" in accuracy["claim"] and "at least -0.50 needed" in accuracy["evidence"]
