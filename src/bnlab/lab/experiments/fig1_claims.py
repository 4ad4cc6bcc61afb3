"""Figure 1's numbers and verdicts, computed from the run's records alone (metrics.jsonl).

Curves are averaged over seeds; the spread is the sample standard deviation across seeds. The drift of a unit is
defined in docs/experiments.md: the mean, over the {15, 50, 85}th percentiles of its input (over the test set),
of the range each percentile sweeps during training (max over evaluations minus min), in the sigmoid's own
input units, since that scale decides where the sigmoid saturates. The window starts at the first evaluation
after step 0: at step 0 the BN network's running statistics still hold their initial values (mean 0, variance 1),
so in eval mode it computes exactly the baseline's function, and the jump to normalized inputs that follows
is the running averages warming up, not a drift of the distribution the network trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.experiments.fig1 import CLAIM_STEPS, MODELS, PERCENTILES, Fig1Config

__all__ = ["Curves", "curves", "drift_window", "summarize", "unit_drift"]

ACCURACY_MARGIN = 0.002  # claim (2): "at least as accurate", within 0.2 points


@dataclass(frozen=True)
class Curves:
    """One network's measurements over seeds: ``steps`` (T,), ``accuracy`` (S, T), ``percentiles`` (S, 3, T, H).

    A network that diverged has NaN after its last evaluation.
    """

    seeds: list[int]
    steps: np.ndarray
    accuracy: np.ndarray
    percentiles: np.ndarray


def curves(records: list[dict[str, Any]]) -> dict[str, Curves]:
    """Group the eval records by network and seed, aligned on the union of evaluation steps."""
    evals = [r for r in records if r.get("kind") == "eval"]
    out: dict[str, Curves] = {}
    steps = np.array(sorted({r["step"] for r in evals}), dtype=np.int64)
    col = {int(s): i for i, s in enumerate(steps)}
    for model in MODELS:
        mine = [r for r in evals if r["model"] == model]
        seeds = sorted({r["seed"] for r in mine})
        if not seeds:
            continue
        hidden = len(mine[0][f"p{PERCENTILES[0]}"])
        acc = np.full((len(seeds), len(steps)), np.nan)
        pct = np.full((len(seeds), len(PERCENTILES), len(steps), hidden), np.nan)
        row = {s: i for i, s in enumerate(seeds)}
        for r in mine:
            i, t = row[r["seed"]], col[r["step"]]
            acc[i, t] = r["test_accuracy"]
            for k, p in enumerate(PERCENTILES):
                pct[i, k, t] = r[f"p{p}"]
        out[model] = Curves(seeds, steps, acc, pct)
    return out


def unit_drift(percentiles: np.ndarray) -> np.ndarray:
    """(…, 3, T, H) percentile trajectories → (…, H): mean over percentiles of (max − min over time)."""
    span = np.nanmax(percentiles, axis=-2) - np.nanmin(percentiles, axis=-2)
    return span.mean(axis=-2)  # type: ignore[no-any-return]


def drift_window(c: Curves) -> tuple[np.ndarray, np.ndarray]:
    """The steps (T',) and percentiles (S, 3, T', H) over which drift is measured: every evaluation after step 0."""
    keep = c.steps > 0
    return c.steps[keep], c.percentiles[:, :, keep]


def _at(c: Curves, step: int) -> tuple[float, float]:
    """Mean and spread across seeds of the accuracy at ``step``."""
    values = c.accuracy[:, int(np.searchsorted(c.steps, step))]
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), spread


def _pct(value: float, spread: float = 0.0) -> str:
    return f"{100 * value:.2f}%" + (f" ± {100 * spread:.2f}" if spread else "")


def summarize(config: Fig1Config, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers, tables and verdicts of a Figure 1 run (all seeds found in ``records``)."""
    c = curves(records)
    missing = [m for m in MODELS if m not in c]
    if missing:
        raise ValueError(f"the records hold no evaluation of the {' and '.join(missing)} network(s); the run was "
                         f"interrupted before it measured them")
    base, bn = c["baseline"], c["bn"]
    seeds = sorted(set(base.seeds) & set(bn.seeds))
    steps = base.steps
    final = int(steps[-1])
    ends = [r for r in records if r.get("kind") == "end"]
    diverged = sorted({f"{r['model']} (seed {r['seed']})" for r in ends if r["diverged"]})
    base_final, bn_final = _at(base, final), _at(bn, final)

    claims = [_claim_faster(config, base, bn, final, base_final[0]),
              _claim_accuracy(base_final, bn_final)]
    drift_base = unit_drift(drift_window(base)[1]).mean(axis=0)  # (H,), averaged over seeds
    drift_bn = unit_drift(drift_window(bn)[1]).mean(axis=0)
    claims.append(_claim_stability(drift_base, drift_bn))
    if diverged:
        for claim in claims:
            claim["evidence"] += f" Diverged (loss not finite): {', '.join(diverged)}."

    table_steps = [s for s in (500, 1000, 2000, 5000, 10_000, 20_000, 30_000, 40_000) if s < final and s in steps]
    accuracy_rows = [[f"{s:,}", _pct(*_at(base, s)), _pct(*_at(bn, s))] for s in [*table_steps, final]]
    unit = config.unit
    drift_rows = [
        [name, f"{np.median(d):.3f}", f"{np.percentile(d, 25):.3f} – {np.percentile(d, 75):.3f}", f"{d[unit]:.3f}"]
        for name, d in (("baseline", drift_base), ("BN", drift_bn))
    ]
    seconds = {m: sum(r["seconds"] for r in ends if r["model"] == m) for m in MODELS}
    return {
        "experiment": "fig1",
        "title": "Figure 1: a sigmoid MLP with and without batch normalization",
        "complete": len(ends) == 2 * len(seeds) and not missing,
        "summary": {
            "seeds": seeds,
            "steps": final,
            "final_accuracy": {"baseline": base_final[0], "bn": bn_final[0]},
            "final_accuracy_spread": {"baseline": base_final[1], "bn": bn_final[1]},
            "accuracy_at": {str(s): {"baseline": _at(base, s)[0], "bn": _at(bn, s)[0]}
                            for s in CLAIM_STEPS if s in steps},
            "bn_reaches_baseline_final_at": _reach_step(bn, base_final[0]),
            "drift_median": {"baseline": float(np.median(drift_base)), "bn": float(np.median(drift_bn))},
            "drift_share_of_units_bn_lower": float(np.mean(drift_bn < drift_base)),
            "diverged": diverged,
            "train_seconds": seconds,
        },
        "claims": claims,
        "tables": [
            {"title": "Test accuracy (mean ± std over seeds)" if len(seeds) > 1 else "Test accuracy",
             "columns": ["step", "baseline", "BN"], "rows": accuracy_rows},
            {"title": "Drift of the sigmoid inputs, last hidden layer (per unit, all units)",
             "columns": ["network", "median drift", "interquartile range", f"unit {unit}"], "rows": drift_rows},
            {"title": "Training time (all seeds)", "columns": ["network", "seconds"],
             "rows": [[m, f"{seconds[m]:.1f}"] for m in MODELS]},
        ],
    }


def _reach_step(c: Curves, target: float) -> int | None:
    """The first evaluation step at which the seed-mean accuracy is at least ``target``."""
    mean = c.accuracy.mean(axis=0)
    hits = np.flatnonzero(mean >= target)
    return int(c.steps[hits[0]]) if len(hits) else None


def _claim_faster(config: Fig1Config, base: Curves, bn: Curves, final: int, base_final: float) -> dict[str, Any]:
    statement = ("BN trains faster: its test accuracy after 1,000 and 2,000 steps beats the baseline's, and it "
                 "reaches the baseline's final accuracy in at most half the steps.")
    if final < max(CLAIM_STEPS):
        return {"claim": statement, "verdict": "not judged",
                "evidence": f"the run has {final:,} steps; the claim needs at least {max(CLAIM_STEPS):,}."}
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
    return {"claim": statement, "verdict": "reproduced" if ok else "not reproduced",
            "evidence": "; ".join(parts) + "."}


def _claim_accuracy(base_final: tuple[float, float], bn_final: tuple[float, float]) -> dict[str, Any]:
    statement = "BN ends at least as accurate as the baseline (within 0.2 points)."
    ok = bn_final[0] >= base_final[0] - ACCURACY_MARGIN
    diff = 100 * (bn_final[0] - base_final[0])
    return {"claim": statement, "verdict": "reproduced" if ok else "not reproduced",
            "evidence": f"final test accuracy BN {_pct(*bn_final)} vs baseline {_pct(*base_final)} "
                        f"({diff:+.2f} points; at least -0.20 needed)."}


def _claim_stability(drift_base: np.ndarray, drift_bn: np.ndarray) -> dict[str, Any]:
    statement = ("BN keeps the distribution of the sigmoid inputs more stable during training (drift over all "
                 "units of the last hidden layer).")
    med_base, med_bn = float(np.median(drift_base)), float(np.median(drift_bn))
    share = float(np.mean(drift_bn < drift_base))
    ok = med_bn < med_base and share > 0.5
    ratio = med_bn / med_base if med_base > 0 else float("inf")
    return {"claim": statement, "verdict": "reproduced" if ok else "not reproduced",
            "evidence": f"median drift over {len(drift_base)} units: BN {med_bn:.3f} vs baseline {med_base:.3f} "
                        f"(ratio {ratio:.2f}); BN drifts less in {100 * share:.0f}% of the units (the claim needs "
                        f"a lower median and more than half the units)."}
