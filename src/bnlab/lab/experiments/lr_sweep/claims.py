"""E6's numbers and verdicts, from the run's records alone.

A seed is judged on the sweep's claims when it trained both networks at every learning rate of the
configuration; on the landscape claim when it measured both networks after every number of updates asked for.
Each claim holds only where it holds for every judged seed; the evidence gives each seed's numbers. A seed left
out is named. The thresholds are EXPERIMENTS.md §7.D's proposals, fixed before any run (docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnlab.lab.experiments.lr_sweep.config import MODELS, LrSweepConfig
from bnlab.lab.result import Claim, Result, Table, judged

__all__ = ["ACCURACY_MARGIN", "ALPHA_RATIO", "CALIBRATION", "RISE", "STABLE_RATIO", "TITLE", "alpha_div",
           "best_accuracy", "calibrated", "headline", "landscapes", "largest_stable", "runs_by_key", "summarize"]

TITLE = "E6: batch norm tolerates larger learning rates (Bjorck et al. 2018)"
STABLE_RATIO = 10.0  # §7.D: the largest stable lr with BN ≥ 10× the largest without (calibration: 100×)
ACCURACY_MARGIN = 0.03  # §7.D: best test accuracy with BN ≥ best without + 3 points (calibration: +10.9)
ALPHA_RATIO = 10.0  # §7.D: α_div with BN ≥ 10× α_div without
RISE = 2.0  # α_div: the smallest step size α at which L(w − αg) / L(w) exceeds this (or is not finite)
LABELS = {"plain": "without BN", "bn": "with BN"}
# EXPERIMENTS.md §7.B: the NumPy calibration (global standardization, seed 0): test accuracy (final loss), or
# the step at which the loss stopped being finite. Shown beside this run's numbers, never judged against.
CALIBRATION: dict[float, tuple[str, str]] = {
    0.001: ("0.736 (0.718)", "0.625 (1.251)"), 0.003: ("0.748 (0.582)", "0.749 (0.794)"),
    0.01: ("div. @ 74", "0.810 (0.532)"), 0.03: ("div. @ 4", "0.843 (0.418)"), 0.1: ("div. @ 3", "0.857 (0.375)"),
    0.3: ("div. @ 3", "0.840 (0.504)"), 1.0: ("div. @ 3", "div. @ 66"), 3.0: ("div. @ 3", "div. @ 18")}

Key = tuple[int, str, float]  # seed, model, lr


def calibrated(config: LrSweepConfig) -> bool:
    """Whether the run has the calibration's setup (so that its numbers are worth showing beside the run's)."""
    return (config.dataset, config.pixels, config.depth, config.width, config.batch_size, config.epochs,
            config.train_size) == ("fashion-mnist", "global", 8, 256, 128, 1, 0)


def runs_by_key(records: Sequence[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The ``run`` records by (seed, model, lr)."""
    return {(r["seed"], r["model"], float(r["lr"])): r for r in records if r["kind"] == "run"}


def landscapes(records: Sequence[dict[str, Any]]) -> dict[tuple[int, str, int], dict[str, Any]]:
    """The ``landscape`` records by (seed, model, updates)."""
    return {(r["seed"], r["model"], r["updates"]): r for r in records if r["kind"] == "landscape"}


def _planned_seeds(records: Sequence[dict[str, Any]]) -> list[int]:
    plan = next((r for r in records if r["kind"] == "plan"), None)
    if plan is not None:
        return list(plan["seeds"])
    return sorted({r["seed"] for r in records if "seed" in r and r["kind"] in ("run", "landscape")})


def largest_stable(runs: dict[Key, dict[str, Any]], seed: int, model: str, lrs: Sequence[float]) -> float | None:
    """The largest learning rate at which ``model`` did not diverge in ``seed`` (None: it diverged at every one)."""
    stable = [lr for lr in lrs if not runs[(seed, model, lr)]["diverged"]]
    return max(stable) if stable else None


def best_accuracy(runs: dict[Key, dict[str, Any]], seed: int, model: str,
                  lrs: Sequence[float]) -> tuple[float, float] | None:
    """(best test accuracy, its learning rate) over the runs of ``model`` that did not diverge, or None."""
    found = [(runs[(seed, model, lr)]["test_accuracy"], lr) for lr in lrs
             if not runs[(seed, model, lr)]["diverged"] and runs[(seed, model, lr)]["test_accuracy"] is not None]
    return max(found) if found else None


def alpha_div(alphas: Sequence[float], ratios: Sequence[float | None]) -> float | None:
    """The smallest α whose ratio L(w − αg)/L(w) exceeds :data:`RISE` or is not finite (None: none does)."""
    for alpha, ratio in zip(alphas, ratios, strict=True):
        if ratio is None or not math.isfinite(ratio) or ratio > RISE:
            return float(alpha)
    return None


def _g(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _lr(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _sweep_seeds(config: LrSweepConfig, runs: dict[Key, dict[str, Any]],
                 planned: Sequence[int]) -> tuple[list[int], list[str]]:
    judged_, left = [], []
    for seed in planned:
        missing = [f"{m} at lr {lr:g}" for m in config.models for lr in config.lrs if (seed, m, lr) not in runs]
        if missing:
            left.append(f"seed {seed} (not measured: {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''})")
        else:
            judged_.append(seed)
    return judged_, left


def _not_judged(statement: str, why: str) -> Claim:
    return Claim(statement, "not judged", why)


def _with_left(evidence: str, left: Sequence[str]) -> str:
    return evidence + (f" Left out: {'; '.join(left)}." if left else "")


def _stable_claim(config: LrSweepConfig, runs: dict[Key, dict[str, Any]], seeds: list[int],
                  left: list[str]) -> Claim:
    statement = (f"The largest stable learning rate with BN is at least {STABLE_RATIO:g}× the largest without "
                 f"(stable: the loss stayed finite and the final training loss is at most {config.diverged_loss:g}).")
    if set(config.models) != set(MODELS):
        return _not_judged(statement, "the run trained only one network; set models=plain,bn.")
    if max(config.lrs) / min(config.lrs) < STABLE_RATIO:
        return _not_judged(statement, f"the learning rates span less than {STABLE_RATIO:g}×; widen lrs.")
    if not seeds:
        return _not_judged(statement, _with_left("no seed trained both networks at every learning rate.", left))
    holds, texts = True, []
    for seed in seeds:
        plain = largest_stable(runs, seed, "plain", config.lrs)
        bn = largest_stable(runs, seed, "bn", config.lrs)
        if bn is None:
            ok, ratio = False, "BN diverged at every rate"
        elif plain is None:
            ok, ratio = True, "without BN every rate diverged"
        else:
            ok, ratio = bn >= STABLE_RATIO * plain * (1 - 1e-9), f"{bn / plain:.3g}×"
        holds &= ok
        texts.append(f"seed {seed}: without BN {_lr(plain)}, with BN {_lr(bn)} ({ratio})")
    return Claim(statement, judged(holds),
                 _with_left(f"{'; '.join(texts)} (threshold {STABLE_RATIO:g}×; the sweep: "
                            f"{', '.join(f'{lr:g}' for lr in config.lrs)}).", left))


def _accuracy_claim(config: LrSweepConfig, runs: dict[Key, dict[str, Any]], seeds: list[int],
                    left: list[str]) -> Claim:
    statement = (f"The best test accuracy over the sweep with BN beats the best without by at least "
                 f"{100 * ACCURACY_MARGIN:g} points (over the learning rates that did not diverge).")
    if set(config.models) != set(MODELS):
        return _not_judged(statement, "the run trained only one network; set models=plain,bn.")
    if not seeds:
        return _not_judged(statement, _with_left("no seed trained both networks at every learning rate.", left))
    holds, texts = True, []
    for seed in seeds:
        plain = best_accuracy(runs, seed, "plain", config.lrs)
        bn = best_accuracy(runs, seed, "bn", config.lrs)
        if bn is None:
            ok, gap = False, "BN never trained"
        elif plain is None:
            ok, gap = True, "without BN no rate trained"
        else:
            ok, gap = bn[0] >= plain[0] + ACCURACY_MARGIN - 1e-12, f"{100 * (bn[0] - plain[0]):+.1f} points"
        holds &= ok
        texts.append(f"seed {seed}: without BN {_g(plain and plain[0], 4)} (lr {_lr(plain and plain[1])}), with BN "
                     f"{_g(bn and bn[0], 4)} (lr {_lr(bn and bn[1])}): {gap}")
    return Claim(statement, judged(holds), _with_left(f"{'; '.join(texts)} (threshold +{100 * ACCURACY_MARGIN:g} "
                                                      f"points).", left))


def _small_rate(config: LrSweepConfig, runs: dict[Key, dict[str, Any]], seeds: list[int]) -> Claim:
    lr = min(config.lrs)
    statement = (f"Reported, not required: at the smallest learning rate ({lr:g}) BN is often worse than no BN "
                 f"(Bjorck et al.: BN's gain comes from the larger rates it allows, not from a matched small one).")
    if set(config.models) != set(MODELS) or not seeds:
        return _not_judged(statement, "the run did not train both networks at every learning rate of a seed.")
    texts = []
    for seed in seeds:
        p, b = runs[(seed, "plain", lr)], runs[(seed, "bn", lr)]
        diff = "" if p["test_accuracy"] is None or b["test_accuracy"] is None else \
            f": BN {100 * (b['test_accuracy'] - p['test_accuracy']):+.1f} points"
        texts.append(f"seed {seed}: test accuracy without BN {_g(p['test_accuracy'], 4)} (final loss "
                     f"{_g(p['final_loss'])}), with BN {_g(b['test_accuracy'], 4)} (final loss "
                     f"{_g(b['final_loss'])}){diff}")
    calibration = " (EXPERIMENTS.md's NumPy calibration: 0.736 without, 0.625 with)" if calibrated(config) and \
        lr == min(CALIBRATION) else ""
    return Claim(statement, "reported", "; ".join(texts) + calibration + ".")


def _landscape_claim(config: LrSweepConfig, records: Sequence[dict[str, Any]], planned: Sequence[int]) -> Claim:
    statement = (f"BN lets a step along the gradient go further before the loss rises: α_div (the smallest α with "
                 f"L(w − αg)/L(w) > {RISE:g}) with BN is at least {ALPHA_RATIO:g}× α_div without, at "
                 f"initialization and after {', '.join(str(u) for u in config.landscape_updates if u)} steps "
                 f"at lr {config.landscape_lr:g}.")
    if not config.landscape_updates or set(config.models) != set(MODELS):
        return _not_judged(statement, "the run measured no landscape of both networks (landscape_updates, models).")
    found = landscapes(records)
    texts, verdicts, missing = [], [], []
    for seed in planned:
        for u in config.landscape_updates:
            if (seed, "plain", u) not in found or (seed, "bn", u) not in found:
                missing.append(f"seed {seed} after {u} updates")
                continue
            p = alpha_div(found[(seed, "plain", u)]["alphas"], found[(seed, "plain", u)]["ratios"])
            b = alpha_div(found[(seed, "bn", u)]["alphas"], found[(seed, "bn", u)]["ratios"])
            if p is None:
                status = "undecided"  # neither a rise without BN to compare with, nor a bound
            elif b is None:
                status = "holds" if config.alpha_max >= ALPHA_RATIO * p else "undecided"
            else:
                status = "holds" if b >= ALPHA_RATIO * p * (1 - 1e-9) else "fails"
            verdicts.append(status)
            bn_text = f"> {config.alpha_max:g} (never rose)" if b is None else f"{b:.3g}"
            texts.append(f"seed {seed}, after {u} updates: α_div without BN "
                         f"{'> ' + format(config.alpha_max, 'g') if p is None else format(p, '.3g')}, with BN "
                         f"{bn_text}")
    note = f" Not measured: {', '.join(missing)}." if missing else ""
    if not verdicts:
        return _not_judged(statement, "no landscape of both networks was measured." + note)
    evidence = "; ".join(texts) + f" (threshold {ALPHA_RATIO:g}×; α over [{config.alpha_min:g}, " \
                                  f"{config.alpha_max:g}], {config.alpha_count} values)." + note
    if "fails" in verdicts:
        return Claim(statement, "not reproduced", evidence)
    if "undecided" in verdicts:
        return _not_judged(statement, evidence + f" Undecided where a ratio never rose above {RISE:g} within the α "
                                                 f"range and the range cannot bound it by {ALPHA_RATIO:g}×: widen "
                                                 f"alpha_max.")
    return Claim(statement, "reproduced", evidence)


def _diverged_text(r: dict[str, Any], config: LrSweepConfig) -> str:
    if r["diverged_at"] is not None:
        return f"at step {r['diverged_at']}"
    if r["diverged"]:
        return f"loss {_g(r['final_loss'])} > {config.diverged_loss:g}"
    return "no"


def _sweep_table(config: LrSweepConfig, runs: dict[Key, dict[str, Any]], seeds: Sequence[int]) -> Table:
    columns = ["lr"]
    for m in config.models:
        columns += [f"{LABELS[m]}: test accuracy", f"{LABELS[m]}: final loss", f"{LABELS[m]}: diverged"]
    shown = calibrated(config)
    if shown:
        columns += ["calibration without BN", "calibration with BN"]
    rows = []
    for lr in config.lrs:
        row: list[Any] = [f"{lr:g}"]
        for m in config.models:
            mine = [runs[(s, m, lr)] for s in seeds if (s, m, lr) in runs]
            accs = [r["test_accuracy"] for r in mine if not r["diverged"] and r["test_accuracy"] is not None]
            losses = [r["final_loss"] for r in mine if not r["diverged"]]
            diverged = [_diverged_text(r, config) for r in mine]
            row += [_mean_text(accs, 4), _mean_text(losses, 3),
                    "no" if diverged and set(diverged) == {"no"} else "; ".join(diverged) or "—"]
        if shown:
            row += list(CALIBRATION.get(lr, ("—", "—")))
        rows.append(row)
    spread = " Mean ± standard deviation over the seeds that did not diverge." if len(seeds) > 1 else ""
    calibration = (" Calibration: EXPERIMENTS.md §7.B's NumPy re-implementation of this setup (seed 0), test "
                   "accuracy (final loss), for comparison only.") if shown else ""
    return Table(f"The sweep: {config.epochs} epoch(s) per learning rate", columns, rows,
                 note=f"Test accuracy with the running statistics (eval mode); final loss: the mean training loss "
                      f"of the last {config.final_window} steps; diverged: the step at which the loss stopped being "
                      f"finite, or the final loss above {config.diverged_loss:g}.{spread}{calibration}")


def _mean_text(values: Sequence[float], digits: int) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{np.mean(values):.{digits}g} ± {np.std(values, ddof=1):.2g}"


def _landscape_table(config: LrSweepConfig, records: Sequence[dict[str, Any]]) -> Table | None:
    found = landscapes(records)
    if not found:
        return None
    rows = []
    for (seed, model, u), r in sorted(found.items()):
        ratios = [v for v in r["ratios"] if v is not None and math.isfinite(v)]
        best = min(range(len(r["ratios"])), key=lambda i: r["ratios"][i] if r["ratios"][i] is not None
                   else math.inf)
        a = alpha_div(r["alphas"], r["ratios"])
        rows.append([seed, LABELS[model], u, f"> {config.alpha_max:g}" if a is None else f"{a:.3g}",
                     _g(min(ratios) if ratios else None), f"{r['alphas'][best]:.3g}"])
    return Table("The loss along the gradient, L(w − αg) / L(w)",
                 ["seed", "network", "after updates", f"α_div (ratio > {RISE:g})", "lowest ratio", "at α"], rows,
                 note=f"On the step's own batch (batch statistics), the gradient of that batch; after 0 updates: at "
                      f"initialization; later: after plain SGD at lr {config.landscape_lr:g}.")


def summarize(config: LrSweepConfig, records: list[dict[str, Any]]) -> Result:
    """The claims, the sweep's table and the landscape's, and summary numbers, from ``records``."""
    runs = runs_by_key(records)
    planned = _planned_seeds(records)
    if not runs and not landscapes(records):
        raise ValueError("the run holds no measurement (no run or landscape record)")
    seeds, left = _sweep_seeds(config, runs, planned)
    claims = [_stable_claim(config, runs, seeds, left), _accuracy_claim(config, runs, seeds, left),
              _small_rate(config, runs, seeds), _landscape_claim(config, records, planned)]
    tables = [_sweep_table(config, runs, [s for s in planned if any(k[0] == s for k in runs)])]
    table = _landscape_table(config, records)
    if table is not None:
        tables.append(table)
    summary: dict[str, Any] = {"seeds": seeds}
    for m in config.models:
        summary[f"largest_stable_{m}"] = [largest_stable(runs, s, m, config.lrs) for s in seeds]
        summary[f"best_accuracy_{m}"] = [(best_accuracy(runs, s, m, config.lrs) or (None,))[0] for s in seeds]
    return Result("lr_sweep", TITLE, claims, tables, summary)


def headline(result: Result) -> dict[str, str]:
    """The largest stable rate and the best accuracy of each network (first judged seed), for sweep tables."""
    s = result.summary
    out = {}
    stable, best = (s.get("largest_stable_plain"), s.get("largest_stable_bn")), \
        (s.get("best_accuracy_plain"), s.get("best_accuracy_bn"))
    if all(stable):
        out["largest stable lr (no BN / BN)"] = f"{_lr(stable[0][0])} / {_lr(stable[1][0])}"  # type: ignore[index]
    if all(best):
        out["best accuracy (no BN / BN)"] = f"{_g(best[0][0], 4)} / {_g(best[1][0], 4)}"  # type: ignore[index]
    return out
