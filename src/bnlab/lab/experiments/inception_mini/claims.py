"""E1b's numbers and verdicts, from the run's records alone.

**Seeds.** A seed is judged when every variant the run trains has ended (an ``end`` record) after being evaluated
at every scheduled step up to where it stopped: the last step, or the evaluation at which its training loss
stopped being finite (a divergence is an outcome here, not a failure: Inception-x5 is expected to diverge). Other
seeds are left out of the verdicts, the tables and the figures, and named.

**Steps to reach.** Curves are averaged over the judged seeds (a step where some seed had already diverged is
missing, not averaged over fewer seeds). The baseline's best is the highest mean validation accuracy of
Inception over the evaluations after step 0, and its steps are the first evaluation step where it reaches it;
another variant's steps are the first evaluation step after step 0 where its mean curve is at least that accuracy
(the paper's "steps to match Inception"). Steps are resolved to the evaluation grid. The thresholds are
EXPERIMENTS.md §2.D's proposals, fixed before any run (docs/experiments.md).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.experiments.inception_mini.config import BASELINE, VARIANTS, InceptionConfig, eval_steps, hyper
from bnlab.lab.result import Claim, Result, Table, Verdict, judged

__all__ = ["BASELINE_LEARNED", "BN_BASELINE_RATIO", "BN_X5_RATIO", "DIVERGED_ACCURACY", "SIGMOID_CHANCE",
           "SIGMOID_MARGIN", "TITLE", "X5_DROP", "Curves", "JudgedSeeds", "best", "curves", "headline",
           "judged_seeds", "reach_step", "summarize"]

TITLE = "E1b: accelerating BN networks (the paper's Figure 3) with a mini Inception on Fashion-MNIST"
BN_BASELINE_RATIO = 0.6  # BN-Baseline: steps to the baseline's best ≤ 0.6× the baseline's (paper 13.3/31 = 0.43)
BN_X5_RATIO = 0.35  # BN-x5: ≤ 0.35× (paper 2.1/31 = 0.07)
DIVERGED_ACCURACY = 0.20  # Inception-x5 "fails": diverges, or ends at or below this accuracy, ...
X5_DROP = 0.05  # ... or ends at least this far below the baseline's final accuracy
SIGMOID_MARGIN = 0.05  # BN-x5-Sigmoid's best ≥ the baseline's best − 5 points (paper 69.8% against 72.2%)
SIGMOID_CHANCE = 0.30  # Inception-Sigmoid's best ≤ 30% (paper: chance)
# Not a claim's threshold but a precondition: a baseline whose best is below this (3× chance on 10 classes) has
# not learned, and "steps to reach its best" would compare noise; the claims are then not judged.
BASELINE_LEARNED = 0.30
NOT_JUDGED: Verdict = "not judged"


@dataclass(frozen=True)
class Curves:
    """One variant's measurements over the judged seeds, aligned on ``steps`` (T,): ``accuracy``, ``loss`` and
    ``weight_norm`` are (S, T), NaN where a seed did not measure (after it diverged); ``stopped`` (S,) is the step
    each seed's training ended at, ``diverged`` (S,) whether it diverged."""

    seeds: list[int]
    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    weight_norm: np.ndarray
    stopped: np.ndarray
    diverged: np.ndarray

    def mean_accuracy(self) -> np.ndarray:
        """(T,) the mean over seeds; NaN at a step some seed did not measure."""
        return self.accuracy.mean(axis=0)  # type: ignore[no-any-return]


def _value(v: Any) -> float:
    return np.nan if v is None else float(v)


def curves(config: InceptionConfig, records: list[dict[str, Any]],
           seeds: Collection[int] | None = None) -> dict[str, Curves]:
    """The ``eval`` and ``end`` records of ``seeds`` (default all) grouped by variant, on the scheduled steps."""
    steps = np.array(eval_steps(config), dtype=np.int64)
    col = {int(s): i for i, s in enumerate(steps)}
    ends = {(r["seed"], r["variant"]): r for r in records if r.get("kind") == "end"}
    evals = [r for r in records if r.get("kind") == "eval" and (seeds is None or r["seed"] in seeds)
             and r["step"] in col]
    out: dict[str, Curves] = {}
    for name in config.variants:
        mine = [r for r in evals if r["variant"] == name]
        found = sorted({r["seed"] for r in mine})
        if not found:
            continue
        row = {s: i for i, s in enumerate(found)}
        arrays = {k: np.full((len(found), len(steps)), np.nan) for k in ("accuracy", "loss", "weight_norm")}
        for r in mine:
            i, t = row[r["seed"]], col[r["step"]]
            arrays["accuracy"][i, t] = _value(r["val_accuracy"])
            arrays["loss"][i, t] = _value(r["train_loss"])
            arrays["weight_norm"][i, t] = _value(r["weight_norm"])
        stopped = np.array([ends[(s, name)]["steps"] if (s, name) in ends else -1 for s in found])
        diverged = np.array([bool(ends[(s, name)]["diverged"]) if (s, name) in ends else False for s in found])
        out[name] = Curves(found, steps, arrays["accuracy"], arrays["loss"], arrays["weight_norm"], stopped,
                           diverged)
    return out


@dataclass(frozen=True)
class JudgedSeeds:
    """The seeds the verdicts use, and each other seed with why it is left out."""

    judged: list[int]
    left_out: dict[int, str]

    def describe(self) -> str:
        return "; ".join(f"seed {seed}: {why}" for seed, why in self.left_out.items())


def _unfinished(config: InceptionConfig, name: str, steps: list[int], end: dict[str, Any] | None) -> str | None:
    """Why variant ``name`` of one seed cannot be judged, or None when it ended as scheduled (or diverged)."""
    if end is None:
        return f"{name} never started" if not steps else f"{name} stopped at step {steps[-1]:,} (interrupted)"
    expected = [s for s in eval_steps(config) if s <= end["steps"]]
    if steps != expected:
        return f"{name} was evaluated at {len(steps)} of its {len(expected)} scheduled steps"
    if not end["diverged"] and end["steps"] != config.steps:
        return f"{name} ended at step {end['steps']:,} of {config.steps:,} without diverging"
    return None


def judged_seeds(config: InceptionConfig, records: list[dict[str, Any]]) -> JudgedSeeds:
    """The seeds in which every variant of ``config.variants`` ended, and why each other seed is left out (the
    seeds considered are the planned ones and those found in the records)."""
    steps: dict[tuple[int, str], list[int]] = {}
    ends: dict[tuple[int, str], dict[str, Any]] = {}
    planned: set[int] = set()
    for r in records:
        if r.get("kind") == "eval":
            steps.setdefault((r["seed"], r["variant"]), []).append(r["step"])
        elif r.get("kind") == "end":
            ends[(r["seed"], r["variant"])] = r
        elif r.get("kind") == "plan":
            planned.update(r["seeds"])
    judged_, left_out = [], {}
    for seed in sorted(planned | {s for s, _ in steps} | {s for s, _ in ends}):
        why = [_unfinished(config, v, sorted(steps.get((seed, v), [])), ends.get((seed, v)))
               for v in config.variants]
        if all(w is not None and w.endswith("never started") for w in why):
            left_out[seed] = "never started"
        elif any(why):
            left_out[seed] = "; ".join(w for w in why if w)
        else:
            judged_.append(seed)
    return JudgedSeeds(judged_, left_out)


def reach_step(c: Curves, target: float) -> int | None:
    """The first evaluation step after step 0 at which the mean accuracy is at least ``target``; None if never."""
    trained = c.steps > 0
    hits = np.flatnonzero(np.nan_to_num(c.mean_accuracy()[trained], nan=-1.0) >= target)
    return int(c.steps[trained][hits[0]]) if len(hits) else None


def best(c: Curves) -> tuple[float, int] | None:
    """(best mean accuracy, the first step it was reached at) over the evaluations after step 0 (the untrained
    network's accuracy is not a result); None if none was measured."""
    trained = c.steps > 0
    mean = c.mean_accuracy()[trained]
    if not np.isfinite(mean).any():
        return None
    i = int(np.nanargmax(mean))
    return float(mean[i]), int(c.steps[trained][i])


def _final(c: Curves) -> float | None:
    """The mean accuracy at the last scheduled step; None if some seed did not get there (diverged)."""
    value = c.mean_accuracy()[-1]
    return float(value) if np.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _stop(c: Curves) -> str:
    """"diverged at step N" (seeds joined), or ""."""
    if not c.diverged.any():
        return ""
    return "diverged at step " + ", ".join(f"{int(s):,}" for s in c.stopped[c.diverged])


def _describe(name: str, c: Curves, target: float, base_steps: int) -> tuple[int | None, str]:
    """(steps to reach ``target``, "… at step N (0.43× the baseline's)" or "never … (its best …)")."""
    reach = reach_step(c, target)
    label = VARIANTS[name].label
    if reach is None:
        b = best(c)
        tail = f"; {_stop(c)}" if c.diverged.any() else ""
        return None, f"{label} never reached it (its best {_pct(b[0] if b else None)}{tail})"
    return reach, f"{label} reached it at step {reach:,} ({reach / base_steps:.2f}× the baseline's)"


def _claim_speed(name: str, ratio: float, paper: str, c: dict[str, Curves], base: tuple[float, int],
                 converged: str) -> Claim:
    label = VARIANTS[name].label
    statement = (f"{label} reaches the Inception baseline's best validation accuracy in at most {ratio:g}× the "
                 f"steps the baseline needs (paper: {paper}).")
    if name not in c:
        return Claim(statement, NOT_JUDGED, f"the run did not train {name} (add it to variants).")
    reach, text = _describe(name, c[name], base[0], base[1])
    ok = reach is not None and reach <= ratio * base[1]
    return Claim(statement, judged(ok), f"Inception's best {_pct(base[0])} at step {base[1]:,}{converged}; {text} "
                                        f"(at most {ratio * base[1]:,.0f} steps needed).")


def _claim_x5(c: dict[str, Curves], base_final: float | None) -> Claim:
    statement = (f"Without BN the 5× learning rate fails: Inception-x5 diverges (training loss not finite), ends at "
                 f"or below {DIVERGED_ACCURACY:.0%} accuracy, or ends at least {100 * X5_DROP:g} points below the "
                 f"baseline (paper: \"the model parameters reach machine infinity\").")
    if "inception-x5" not in c:
        return Claim(statement, NOT_JUDGED, "the run did not train inception-x5 (add it to variants).")
    x5 = c["inception-x5"]
    norms = x5.weight_norm[np.isfinite(x5.weight_norm)]
    growth = f"; weight norm {norms[0]:.3g} at step 0, at most {norms.max():.3g}" if norms.size else ""
    if x5.diverged.any():
        return Claim(statement, "reproduced", f"Inception-x5 {_stop(x5)} (training loss not finite){growth}.")
    final = _final(x5)
    assert final is not None  # a seed that did not diverge ran to the last step (judged_seeds)
    low = final <= DIVERGED_ACCURACY
    dropped = base_final is not None and final <= base_final - X5_DROP
    return Claim(statement, judged(low or dropped),
                 f"Inception-x5 did not diverge; it ends at {_pct(final)} against the baseline's {_pct(base_final)} "
                 f"({100 * (final - (base_final or 0.0)):+.2f} points){growth} (the claim needs a divergence, an end "
                 f"at or below {DIVERGED_ACCURACY:.0%}, or one at least {100 * X5_DROP:g} points below the "
                 f"baseline).")


def _claim_sigmoid_bn(c: dict[str, Curves], base: tuple[float, int]) -> Claim:
    statement = (f"With BN a sigmoid Inception trains: BN-x5-Sigmoid's best accuracy is at least the baseline's "
                 f"best − {100 * SIGMOID_MARGIN:g} points (paper: 69.8% against 72.2%).")
    if "bn-x5-sigmoid" not in c:
        return Claim(statement, NOT_JUDGED, "the run did not train bn-x5-sigmoid (add it to variants).")
    b = best(c["bn-x5-sigmoid"])
    ok = b is not None and b[0] >= base[0] - SIGMOID_MARGIN
    where = f" at step {b[1]:,}" if b else ""
    return Claim(statement, judged(ok), f"BN-x5-Sigmoid's best {_pct(b[0] if b else None)}{where} against "
                                        f"Inception's {_pct(base[0])} (at least {_pct(base[0] - SIGMOID_MARGIN)} "
                                        f"needed).")


def _claim_sigmoid_plain(c: dict[str, Curves]) -> Claim:
    statement = (f"Without BN the sigmoid Inception does not train: Inception-Sigmoid's best accuracy stays at or "
                 f"below {SIGMOID_CHANCE:.0%} (paper: \"the accuracy equivalent to chance\").")
    if "inception-sigmoid" not in c:
        return Claim(statement, NOT_JUDGED, "the run did not train inception-sigmoid (add it to variants).")
    b = best(c["inception-sigmoid"])
    ok = b is not None and b[0] <= SIGMOID_CHANCE
    return Claim(statement, judged(ok), f"Inception-Sigmoid's best {_pct(b[0] if b else None)} (at most "
                                        f"{SIGMOID_CHANCE:.0%} needed; chance is 10%).")


def _reported_x30(config: InceptionConfig, c: dict[str, Curves], target: float | None) -> Claim:
    statement = ("Reported: BN-x30 against BN-x5, which the paper finds slower at first and higher at the end "
                 "(74.8% against 73.0%).")
    if "bn-x30" not in c or "bn-x5" not in c:
        return Claim(statement, NOT_JUDGED, "the run did not train both bn-x5 and bn-x30.")
    early = next((int(s) for s in c["bn-x5"].steps if s >= config.steps / 10), int(c["bn-x5"].steps[-1]))
    t = list(c["bn-x5"].steps).index(early)
    parts = []
    for name in ("bn-x5", "bn-x30"):
        b = best(c[name])
        acc = c[name].mean_accuracy()[t]
        reach = reach_step(c[name], target) if target is not None else None
        parts.append(f"{VARIANTS[name].label}: {_pct(float(acc) if np.isfinite(acc) else None)} at step {early:,}, "
                     f"best {_pct(b[0] if b else None)}, final {_pct(_final(c[name]))}, the baseline's best at "
                     f"{'step ' + format(reach, ',') if reach is not None else 'no step'}"
                     + (f", {_stop(c[name])}" if c[name].diverged.any() else ""))
    return Claim(statement, "reported", "; ".join(parts) + ".")


def _steps_cell(name: str, c: Curves, base: tuple[float, int] | None) -> tuple[str, str]:
    if base is None:
        return "—", "—"
    if name == BASELINE:
        return f"{base[1]:,}", "1.00×"
    reach = reach_step(c, base[0])
    if reach is None:
        return ("never (" + _stop(c) + ")") if c.diverged.any() else "never", "—"
    return f"{reach:,}", f"{reach / base[1]:.2f}×"


def _paper_cells(name: str) -> list[str]:
    v, base_steps = VARIANTS[name], VARIANTS[BASELINE].paper_steps
    steps = f"{v.paper_steps / 1e6:.1f}·10⁶" if v.paper_steps else (v.paper_note or "—")
    ratio = f"{v.paper_steps / base_steps:.2f}×" if v.paper_steps and base_steps else "—"
    return [steps, ratio, _pct(v.paper_best) if v.paper_best is not None else "—"]


def _tables(config: InceptionConfig, c: dict[str, Curves], base: tuple[float, int] | None,
            records: list[dict[str, Any]]) -> list[Table]:
    rows = []
    for name in config.variants:
        if name not in c:
            continue
        b = best(c[name])
        steps, ratio = _steps_cell(name, c[name], base)
        rows.append([VARIANTS[name].label, f"{VARIANTS[name].lr_multiple:g}η0 = {hyper(config, name).lr:g}", steps,
                     ratio, _pct(b[0] if b else None), f"{b[1]:,}" if b else "—", *_paper_cells(name)])
    figure3 = Table("Figure 3, mini: steps to reach Inception's best validation accuracy, and each variant's best",
                    ["model", "initial lr", "steps to Inception's best", "× Inception's", "best accuracy", "at step",
                     "paper: steps to 72.2%", "paper: ×", "paper: best"], rows,
                    note=f"Steps are resolved to the evaluation grid (every {config.eval_every:,} steps of batch "
                         f"{config.batch_size}); accuracy is on the {config.validation:,} held-out validation "
                         f"images. The paper's numbers are ImageNet's (single crop, top-1); only the ratios compare.")
    settings = Table("The variants' settings", ["model", "BN", "activation", "initial lr", "dropout", "L2 weight",
                                                "lr half-life (steps)", "LRN"],
                     [[VARIANTS[n].label, "yes" if VARIANTS[n].batch_norm else "no", VARIANTS[n].activation,
                       f"{hyper(config, n).lr:g}", f"{hyper(config, n).dropout:g}",
                       f"{hyper(config, n).weight_decay:g}", f"{hyper(config, n).lr_half_life:,.0f}",
                       "yes" if hyper(config, n).lrn else "no"] for n in config.variants])
    any_curve = next(iter(c.values()))
    shown = [int(s) for s in any_curve.steps if s > 0]
    milestones = sorted({shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(8, len(shown)))}) if shown else []
    names = [n for n in config.variants if n in c]
    accuracy = Table("Validation accuracy over training (mean over the judged seeds)",
                     ["step", *(VARIANTS[n].label for n in names)],
                     [[f"{s:,}", *(_pct(_at(c[n], s)) for n in names)] for s in milestones])
    ends = [r for r in records if r.get("kind") == "end"]
    time_table = Table("Training time (all seeds, seconds)", ["model", "seconds"],
                       [[VARIANTS[n].label, f"{sum(r['seconds'] for r in ends if r['variant'] == n):.1f}"]
                        for n in config.variants])
    return [figure3, settings, accuracy, time_table]


def _at(c: Curves, step: int) -> float | None:
    value = c.mean_accuracy()[list(c.steps).index(step)]
    return float(value) if np.isfinite(value) else None


def statements(config: InceptionConfig) -> list[str]:
    """The claims' texts, for a run that cannot judge them."""
    dummy: dict[str, Curves] = {}
    base = (0.0, 1)
    return [_claim_speed("bn-baseline", BN_BASELINE_RATIO, "0.43×", dummy, base, "").claim,
            _claim_speed("bn-x5", BN_X5_RATIO, "0.07×", dummy, base, "").claim, _claim_x5(dummy, None).claim,
            _claim_sigmoid_bn(dummy, base).claim, _claim_sigmoid_plain(dummy).claim,
            _reported_x30(config, dummy, None).claim]


def summarize(config: InceptionConfig, records: list[dict[str, Any]]) -> Result:
    """The numbers, tables and verdicts of an E1b run, from the seeds :func:`judged_seeds` keeps."""
    if not any(r.get("kind") == "eval" for r in records):
        raise ValueError("the records hold no evaluation; the run was stopped before it measured anything")
    seeds = judged_seeds(config, records)
    common: dict[str, Any] = {"experiment": "inception_mini", "title": TITLE, "complete": not seeds.left_out,
                              "incomplete": seeds.describe() or None}
    summary: dict[str, Any] = {"seeds": seeds.judged, "seeds_left_out": {str(s): w for s, w in seeds.left_out.items()},
                               "steps": config.steps}
    c = curves(config, records, seeds.judged or None)
    base = best(c[BASELINE]) if BASELINE in c else None
    if not seeds.judged or base is None or base[0] < BASELINE_LEARNED:
        if not seeds.judged:
            why = f"no seed where every variant ended ({seeds.describe()})."
        elif base is None:
            why = ("the run did not train the Inception baseline (add inception to variants); every claim compares "
                   "against it.")
        else:
            why = (f"the Inception baseline did not learn: its best is {_pct(base[0])}, below "
                   f"{BASELINE_LEARNED:.0%}; train longer (steps) for the comparisons to mean something.")
        return Result(**common, summary=summary, claims=[Claim(s, NOT_JUDGED, why) for s in statements(config)],
                      tables=_tables(config, c, base, records) if c else [])
    converged = (" (its last evaluation: it was still improving, so these ratios are an upper bound on its speed-up)"
                 if base[1] == config.steps else "")
    base_final = _final(c[BASELINE])
    claims = [
        _claim_speed("bn-baseline", BN_BASELINE_RATIO, "13.3·10⁶ against 31.0·10⁶ steps, 0.43×", c, base, converged),
        _claim_speed("bn-x5", BN_X5_RATIO, "2.1·10⁶ against 31.0·10⁶ steps, 0.07×", c, base, converged),
        _claim_x5(c, base_final),
        _claim_sigmoid_bn(c, base),
        _claim_sigmoid_plain(c),
        _reported_x30(config, c, base[0]),
    ]
    if seeds.left_out:
        claims = [Claim(k.claim, k.verdict, f"{k.evidence} Judged on seed(s) {', '.join(map(str, seeds.judged))} "
                                            f"only; left out: {seeds.describe()}.") for k in claims]
    summary.update({
        "baseline_best": base[0], "baseline_best_step": base[1], "baseline_final": base_final,
        "best": {n: (best(cv) or (None,))[0] for n, cv in c.items()},
        "steps_to_baseline_best": {n: (base[1] if n == BASELINE else reach_step(cv, base[0])) for n, cv in c.items()},
        "diverged": sorted(n for n, cv in c.items() if cv.diverged.any()),
    })
    return Result(**common, summary=summary, claims=claims, tables=_tables(config, c, base, records))


def headline(result: Result) -> dict[str, str]:
    """Inception's best, and how many of its steps BN-Baseline and BN-x5 needed to match it."""
    s = result.summary
    out: dict[str, str] = {}
    if isinstance(s.get("baseline_best"), float):
        out["Inception best"] = _pct(s["baseline_best"])
    steps = s.get("steps_to_baseline_best") or {}
    base = s.get("baseline_best_step")
    for name in ("bn-baseline", "bn-x5"):
        reach = steps.get(name)
        if isinstance(base, int) and base > 0 and name in steps:
            out[f"{VARIANTS[name].label} steps"] = "never" if reach is None else f"{reach / base:.2f}×"
    return out
