"""Figure 1's numbers and verdicts, computed from the run's records alone (metrics.jsonl).

**Which seeds are judged.** Only the seeds in which every network the run trains (both, unless ``models`` says
otherwise) finished: each has an ``end`` record, did not
diverge, was evaluated at exactly the scheduled steps (:func:`~bnlab.lab.experiments.fig1.eval_steps`) and
measured only finite values. So both networks of a judged seed share the final step and the drift window. A
seed interrupted in the middle of a network, a seed in which either network diverged (its training loss stopped
being finite: it has no final accuracy to compare), and a planned seed that never started are left out of the
verdicts, the tables and the figures, and named in the evidence; with no seed left every claim is "not judged".

Curves are averaged over the judged seeds; the spread is the sample standard deviation across them. The drift of
a unit is defined in docs/experiments.md: the mean, over the {15, 50, 85}th percentiles of its input (over the
test set), of the range each percentile sweeps during training (max over evaluations minus min), in the
sigmoid's own input units, since that scale decides where the sigmoid saturates. The window starts at the first
evaluation after step 0: at step 0 the BN network's running statistics still hold their initial values (mean 0,
variance 1), so in eval mode it computes exactly the baseline's function, and the jump to normalized inputs
that follows is the running averages warming up, not a drift of the distribution the network trains on.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bnlab.lab.experiments.fig1.config import CLAIM_STEPS, MODELS, PERCENTILES, Fig1Config, eval_steps
from bnlab.lab.result import Claim, Result, Table, Verdict, judged

__all__ = ["ACCURACY_MARGIN", "Curves", "JudgedSeeds", "curves", "drift_window", "headline", "judged_seeds",
           "summarize",
           "unit_drift"]

ACCURACY_MARGIN = 0.002  # claim (2): "at least as accurate", within this much accuracy (0.2 points)
NOT_JUDGED: Verdict = "not judged"
MIN_DRIFT_EVALUATIONS = 2  # a range needs two evaluations in the window


@dataclass(frozen=True)
class Curves:
    """One network's measurements over seeds: ``steps`` (T,), ``accuracy`` (S, T), ``percentiles`` (S, 3, T, H).

    A value a seed did not measure is NaN.
    """

    seeds: list[int]
    steps: np.ndarray
    accuracy: np.ndarray
    percentiles: np.ndarray


@dataclass(frozen=True)
class JudgedSeeds:
    """The seeds the verdicts use, and each other seed with why it is left out."""

    judged: list[int]
    left_out: dict[int, str]

    def describe(self) -> str:
        return "; ".join(f"seed {seed}: {why}" for seed, why in self.left_out.items())


def curves(records: list[dict[str, Any]], seeds: Collection[int] | None = None) -> dict[str, Curves]:
    """Group the eval records (of ``seeds``, default all) by network and seed, aligned on the union of steps."""
    evals = [r for r in records if r.get("kind") == "eval" and (seeds is None or r["seed"] in seeds)]
    out: dict[str, Curves] = {}
    steps = np.array(sorted({r["step"] for r in evals}), dtype=np.int64)
    col = {int(s): i for i, s in enumerate(steps)}
    for model in MODELS:
        mine = [r for r in evals if r["model"] == model]
        found = sorted({r["seed"] for r in mine})
        if not found:
            continue
        hidden = len(mine[0][f"p{PERCENTILES[0]}"])
        acc = np.full((len(found), len(steps)), np.nan)
        pct = np.full((len(found), len(PERCENTILES), len(steps), hidden), np.nan)
        row = {s: i for i, s in enumerate(found)}
        for r in mine:
            i, t = row[r["seed"]], col[r["step"]]
            acc[i, t] = np.nan if r["test_accuracy"] is None else r["test_accuracy"]
            for k, p in enumerate(PERCENTILES):
                pct[i, k, t] = np.array(r[f"p{p}"], dtype=float)  # null (a NaN written to JSON) → NaN
        out[model] = Curves(found, steps, acc, pct)
    return out


def _finite(record: dict[str, Any]) -> bool:
    values = [record["test_accuracy"], *(v for p in PERCENTILES for v in record[f"p{p}"])]
    return all(v is not None and math.isfinite(v) for v in values)


def _unfinished(model: str, evals: list[dict[str, Any]], end: dict[str, Any] | None, config: Fig1Config) -> str | None:
    """Why ``model``'s training in one seed cannot be judged, or None when it finished as scheduled."""
    steps = sorted(r["step"] for r in evals)
    if end is None:
        if not steps:
            return f"{model} never started"
        if steps[-1] == config.steps:
            return f"{model} was interrupted after its last evaluation"
        return f"{model} stopped at step {steps[-1]:,} of {config.steps:,} (interrupted)"
    if end.get("diverged"):
        return f"{model} diverged at step {end['steps']:,} (training loss not finite)"
    if steps != eval_steps(config):
        return f"{model} was evaluated at {len(steps)} of the {len(eval_steps(config))} scheduled steps"
    if not all(_finite(r) for r in evals):
        return f"{model} measured values that are not finite"
    return None


def judged_seeds(config: Fig1Config, records: list[dict[str, Any]]) -> JudgedSeeds:
    """The seeds in which every network of ``config.models`` finished as scheduled, and why each other seed is
    left out.

    The seeds considered are those planned (the run's ``plan`` record) and those found in the records.
    """
    evals: dict[tuple[int, str], list[dict[str, Any]]] = {}
    ends: dict[tuple[int, str], dict[str, Any]] = {}
    planned: set[int] = set()
    for r in records:
        if r.get("kind") == "eval":
            evals.setdefault((r["seed"], r["model"]), []).append(r)
        elif r.get("kind") == "end":
            ends[(r["seed"], r["model"])] = r
        elif r.get("kind") == "plan":
            planned.update(r["seeds"])
    judged, left_out = [], {}
    for seed in sorted(planned | {s for s, _ in evals} | {s for s, _ in ends}):
        why = [_unfinished(m, evals.get((seed, m), []), ends.get((seed, m)), config) for m in config.models]
        if all(w is not None and w.endswith("never started") for w in why):
            left_out[seed] = "never started"
        elif any(why):
            left_out[seed] = "; ".join(w for w in why if w)
        else:
            judged.append(seed)
    return JudgedSeeds(judged, left_out)


def unit_drift(percentiles: np.ndarray) -> np.ndarray:
    """(…, 3, T, H) percentile trajectories → (…, H): mean over percentiles of (max − min over time)."""
    span = np.max(percentiles, axis=-2) - np.min(percentiles, axis=-2)
    return span.mean(axis=-2)  # type: ignore[no-any-return]


def drift_window(c: Curves) -> tuple[np.ndarray, np.ndarray]:
    """The steps (T',) and percentiles (S, 3, T', H) over which drift is measured: every evaluation after step 0."""
    keep = c.steps > 0
    return c.steps[keep], c.percentiles[:, :, keep]


def _at(c: Curves, step: int) -> tuple[float, float | None]:
    """Mean across seeds of the accuracy at ``step``, and its spread (None with one seed)."""
    values = c.accuracy[:, list(c.steps).index(step)]
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), spread


def _pct(value: float, spread: float | None = None) -> str:
    return f"{100 * value:.2f}%" + (f" ± {100 * spread:.2f}" if spread is not None else "")


def _cell(c: Curves | None, step: int) -> str:
    """The accuracy at ``step`` as a table cell; "—" where a seed did not measure it."""
    if c is None or step not in c.steps or np.isnan(c.accuracy[:, list(c.steps).index(step)]).any():
        return "—"
    return _pct(*_at(c, step))


def statements() -> dict[str, str]:
    """The three claims as the report states them."""
    at = " and ".join(f"{s:,}" for s in CLAIM_STEPS)
    return {
        "faster": f"BN trains faster: its test accuracy after {at} steps beats the baseline's, and it reaches the "
                  f"baseline's final accuracy in at most half the steps.",
        "accuracy": f"BN ends at least as accurate as the baseline (within {100 * ACCURACY_MARGIN:g} points).",
        "stability": "BN keeps the distribution of the sigmoid inputs more stable during training (drift over all "
                     "units of the last hidden layer).",
    }


TITLE = "Figure 1: a sigmoid MLP with and without batch normalization"


def summarize(config: Fig1Config, records: list[dict[str, Any]]) -> Result:
    """The numbers, tables and verdicts of a Figure 1 run, from the seeds :func:`judged_seeds` keeps."""
    if not any(r.get("kind") == "eval" for r in records):
        raise ValueError("the records hold no evaluation; the run was stopped before it measured anything")
    seeds = judged_seeds(config, records)
    ends = [r for r in records if r.get("kind") == "end"]
    seconds = {m: sum(r["seconds"] for r in ends if r["model"] == m) for m in config.models}
    time_table = Table("Training time (all seeds)", ["network", "seconds"],
                       [[m, f"{seconds[m]:.1f}"] for m in config.models])
    summary: dict[str, Any] = {
        "seeds": seeds.judged,
        "seeds_left_out": {str(s): why for s, why in seeds.left_out.items()},
        "steps": config.steps,
        "diverged": sorted(f"{r['model']} (seed {r['seed']})" for r in ends if r.get("diverged")),
        "train_seconds": seconds,
    }
    common: dict[str, Any] = {"experiment": "fig1", "title": TITLE, "complete": not seeds.left_out,
                              "incomplete": seeds.describe() or None}
    if not seeds.judged:
        why = f"no seed where {' and '.join(config.models)} finished ({seeds.describe()})."
        c = curves(records)
        steps = sorted({int(s) for curve in c.values() for s in curve.steps})
        rows = [[f"{s:,}", _cell(c.get("baseline"), s), _cell(c.get("bn"), s)] for s in _table_steps(steps)]
        return Result(**common, summary=summary,
                      claims=[Claim(s, NOT_JUDGED, why) for s in statements().values()],
                      tables=[Table("Test accuracy (what was measured; no seed finished)", ["step", "baseline", "BN"],
                                    rows), time_table])

    c = curves(records, seeds.judged)
    several = len(seeds.judged) > 1
    final = config.steps
    summary["final_accuracy"] = {m: _at(c[m], final)[0] for m in config.models}
    summary["final_accuracy_spread"] = {m: _at(c[m], final)[1] for m in config.models}
    summary["accuracy_at"] = {str(s): {m: _at(c[m], s)[0] for m in config.models}
                              for s in CLAIM_STEPS if s in c[config.models[0]].steps}
    accuracy = Table("Test accuracy (mean ± std over seeds)" if several else "Test accuracy",
                     ["step", "baseline", "BN"],
                     [[f"{s:,}", _cell(c.get("baseline"), s), _cell(c.get("bn"), s)]
                      for s in _table_steps(list(c[config.models[0]].steps))])
    if set(config.models) != set(MODELS):
        why = (f"the run trained only the {config.models[0]} network (models = {','.join(config.models)}); the "
               f"claims compare both.")
        return Result(**common, summary=summary, claims=[Claim(s, NOT_JUDGED, why) for s in statements().values()],
                      tables=[accuracy, time_table])

    base, bn = c["baseline"], c["bn"]
    base_final, bn_final = _at(base, final), _at(bn, final)
    claims = [_claim_faster(base, bn, final, base_final[0]), _claim_accuracy(base_final, bn_final),
              _claim_stability(base, bn)]
    if seeds.left_out:
        judged = ", ".join(map(str, seeds.judged))
        claims = [replace(claim, evidence=f"{claim.evidence} Judged on seed(s) {judged} only; left out: "
                                          f"{seeds.describe()}.") for claim in claims]
    tables = [accuracy]
    drift = _drifts(base, bn)
    if drift is not None:
        unit = config.unit
        tables.append(Table(
            "Drift of the sigmoid inputs, last hidden layer (per unit, all units)",
            ["network", "median drift", "interquartile range", f"unit {unit}"],
            [[name, f"{np.median(d):.3f}", f"{np.percentile(d, 25):.3f} – {np.percentile(d, 75):.3f}",
              f"{d[unit]:.3f}"] for name, d in (("baseline", drift[0]), ("BN", drift[1]))]))
    tables.append(time_table)
    summary.update({
        "bn_reaches_baseline_final_at": _reach_step(bn, base_final[0]),
        "drift_median": None if drift is None else {"baseline": float(np.median(drift[0])),
                                                    "bn": float(np.median(drift[1]))},
        "drift_share_of_units_bn_lower": None if drift is None else float(np.mean(drift[1] < drift[0])),
    })
    return Result(**common, summary=summary, claims=claims, tables=tables)


def headline(result: Result) -> dict[str, str]:
    """The final test accuracy of each network (mean ± std over the judged seeds), for sweeps and the tour."""
    final = result.summary.get("final_accuracy") or {}
    spread = result.summary.get("final_accuracy_spread") or {}
    return {f"{'BN' if m == 'bn' else m} final": _pct(v, spread.get(m)) for m, v in final.items()
            if isinstance(v, float)}


def _table_steps(steps: list[int]) -> list[int]:
    """The steps the accuracy table shows: a few milestones, then the last one."""
    if not steps:
        return []
    final = int(steps[-1])
    return [s for s in (500, 1000, 2000, 5000, 10_000, 20_000, 30_000, 40_000) if s < final and s in steps] + [final]


def _drifts(base: Curves, bn: Curves) -> tuple[np.ndarray, np.ndarray] | None:
    """Each unit's drift (H,), averaged over seeds, for both networks; None when the window is too short."""
    if len(drift_window(base)[0]) < MIN_DRIFT_EVALUATIONS:
        return None
    return unit_drift(drift_window(base)[1]).mean(axis=0), unit_drift(drift_window(bn)[1]).mean(axis=0)


def _reach_step(c: Curves, target: float) -> int | None:
    """The first evaluation step at which the seed-mean accuracy is at least ``target``."""
    mean = c.accuracy.mean(axis=0)
    hits = np.flatnonzero(mean >= target)
    return int(c.steps[hits[0]]) if len(hits) else None


def _claim_faster(base: Curves, bn: Curves, final: int, base_final: float) -> Claim:
    statement = statements()["faster"]
    if final < max(CLAIM_STEPS):
        return Claim(statement, NOT_JUDGED, f"the run has {final:,} steps; the claim needs at least "
                                            f"{max(CLAIM_STEPS):,}.")
    parts, ok = [], True
    for s in CLAIM_STEPS:
        (a_base, sd_base), (a_bn, sd_bn) = _at(base, s), _at(bn, s)
        ok &= a_bn > a_base
        parts.append(f"after {s:,} steps BN {_pct(a_bn, sd_bn)} vs baseline {_pct(a_base, sd_base)}")
    reach = _reach_step(bn, base_final)
    half = final // 2
    ok &= reach is not None and reach <= half
    where = f"at step {reach:,}" if reach is not None else "never"
    parts.append(f"BN reached the baseline's final {_pct(base_final)} {where} (at most {half:,} needed)")
    return Claim(statement, judged(ok), "; ".join(parts) + ".")


def _claim_accuracy(base_final: tuple[float, float | None], bn_final: tuple[float, float | None]) -> Claim:
    ok = bn_final[0] >= base_final[0] - ACCURACY_MARGIN
    diff = 100 * (bn_final[0] - base_final[0])
    return Claim(statements()["accuracy"], judged(ok),
                 f"final test accuracy BN {_pct(*bn_final)} vs baseline {_pct(*base_final)} "
                 f"({diff:+.2f} points; at least {-100 * ACCURACY_MARGIN:.2f} needed).")


def _claim_stability(base: Curves, bn: Curves) -> Claim:
    statement = statements()["stability"]
    drift = _drifts(base, bn)
    if drift is None:
        n = len(drift_window(base)[0])
        return Claim(statement, NOT_JUDGED, f"the drift window (the evaluations after step 0) holds {n} evaluation"
                                            f"{'' if n == 1 else 's'}; the measure needs at least "
                                            f"{MIN_DRIFT_EVALUATIONS} (make eval_every smaller than steps).")
    drift_base, drift_bn = drift
    med_base, med_bn = float(np.median(drift_base)), float(np.median(drift_bn))
    share = float(np.mean(drift_bn < drift_base))
    ok = med_bn < med_base and share > 0.5
    ratio = f"ratio {med_bn / med_base:.2f}" if med_base > 0 else "no ratio: the baseline does not drift"
    return Claim(statement, judged(ok),
                 f"median drift over {len(drift_base)} units: BN {med_bn:.3f} vs baseline {med_base:.3f} "
                 f"({ratio}); BN drifts less in {100 * share:.0f}% of the units (the claim needs "
                 f"a lower median and more than half the units).")
