"""E2's verdicts, from the run's records alone.

Each claim is judged in every seed whose units it needs finished, and holds only where it holds in all of them;
the evidence gives each seed's numbers. A claim whose networks the run did not train (or did not finish) is "not
judged", saying which. Thresholds are EXPERIMENTS.md §3.D's proposals, fixed before any run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnlab.lab.experiments.santurkar.config import SanturkarConfig, cnn_lr, probed, units
from bnlab.lab.experiments.santurkar.measures import (
    Final,
    final,
    ics_series,
    landscape_series,
    median_step_change,
    trace,
)
from bnlab.lab.result import Claim, Result, Table, judged

__all__ = ["BETA_RATIO", "BETTER_MARGIN", "COSINE_MARGIN", "ICS_RATIO", "LABELS", "LOSS_RANGE_RATIO",
           "NOISE_HURTS", "NOISE_LOSS_RATIO", "NOISE_MARGIN", "TITLE", "headline", "summarize"]

TITLE = "E2 (Santurkar-style): how batch norm helps optimization: noisy BN, ICS through gradients, the landscape"
# (a) noisy BN
NOISE_MARGIN = 0.02  # BN + noise's final training accuracy within 2 pp of BN's ...
NOISE_LOSS_RATIO = 0.10  # ... or its final training loss within 10% of BN's
BETTER_MARGIN = 0.02  # BN and BN + noise end at least 2 pp above Standard
NOISE_HURTS = 0.10  # Standard + noise ends at least 10 pp below Standard, or diverges
# (b) ICS through gradients
ICS_RATIO = 0.8  # BN's median ‖G − G'‖ / ‖G‖ at least 0.8 × Standard's (BN does not reduce ICS)
COSINE_MARGIN = 0.05  # BN's median cos(G, G') at most Standard's + 0.05
# (c) the landscape
LOSS_RANGE_RATIO = 0.5  # BN's median loss variation at most 0.5 × Standard's
BETA_RATIO = 0.5  # BN's median effective β-smoothness at most 0.5 × Standard's

LABELS = {"standard": "Standard", "bn": "Standard + BN", "bn_noise": "Standard + BN + noise",
          "noise": "Standard + noise", "bn_same_lr": "Standard + BN at Standard's lr"}

Records = Sequence[dict[str, Any]]


def _seeds(records: Records) -> list[int]:
    planned = {s for r in records if r["kind"] == "plan" for s in r["seeds"]}
    return sorted(planned | {r["seed"] for r in records if "seed" in r and r["kind"] != "plan"})


def _net_label(config: SanturkarConfig, net: str) -> str:
    return "the CNN" if net == "cnn" else f"the {config.dln_depth}-layer deep linear network"


def _nanmedian(values: np.ndarray) -> float:
    """The median of the values that are not NaN (NaN when none is)."""
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if kept.size else math.nan


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _g(value: float) -> str:
    return "not finite" if not math.isfinite(value) else f"{value:.3g}"


def _per_seed(statement: str, seeds: list[int], need: str,
              check: Callable[[int], tuple[bool, str] | None], threshold: str) -> Claim:
    """A claim judged in each seed by ``check`` (None: the seed lacks what it needs); holds where all hold."""
    results = {seed: check(seed) for seed in seeds}
    found = {s: r for s, r in results.items() if r is not None}
    if not found:
        return Claim(statement, "not judged", f"no seed finished {need}.")
    evidence = "; ".join(f"seed {s}: {text}" for s, (_, text) in found.items())
    missing = [s for s, r in results.items() if r is None]
    if missing:
        evidence += f"; not judged in seed(s) {', '.join(map(str, missing))} ({need} did not finish)"
    return Claim(statement, judged(all(ok for ok, _ in found.values())), f"{evidence} ({threshold}).")


def _finals(records: Records, seed: int, *variants: str) -> list[Final] | None:
    got = [final(records, seed, "cnn", v) for v in variants]
    return None if any(f is None for f in got) else got  # type: ignore[return-value]


def _acc(f: Final) -> float:
    """A diverged network's accuracy counts as 0: it did not train."""
    return 0.0 if f.diverged or f.train_accuracy is None else f.train_accuracy


def _noisy_claims(config: SanturkarConfig, records: Records, seeds: list[int]) -> list[Claim]:
    def as_good(seed: int) -> tuple[bool, str] | None:
        got = _finals(records, seed, "bn", "bn_noise")
        if got is None:
            return None
        bn, noisy = got
        close = abs(_acc(noisy) - _acc(bn)) <= NOISE_MARGIN
        ratio = (noisy.train_loss / bn.train_loss if noisy.train_loss is not None and bn.train_loss
                 and not (bn.diverged or noisy.diverged) else math.inf)
        holds = not (bn.diverged or noisy.diverged) and (close or abs(ratio - 1) <= NOISE_LOSS_RATIO)
        return holds, (f"training accuracy {_pct(_acc(noisy))} with noise, {_pct(_acc(bn))} without; training loss "
                       f"{_g(noisy.train_loss or math.inf)} and {_g(bn.train_loss or math.inf)} (ratio {_g(ratio)})")

    def better(seed: int) -> tuple[bool, str] | None:
        got = _finals(records, seed, "standard", "bn", "bn_noise")
        if got is None:
            return None
        std, bn, noisy = got
        holds = all(_acc(f) >= _acc(std) + BETTER_MARGIN and not f.diverged for f in (bn, noisy))
        same = final(records, seed, "cnn", "bn_same_lr")
        beside = "" if same is None else f"; BN at Standard's lr {_pct(_acc(same))} (not judged)"
        return holds, (f"Standard {_pct(_acc(std))}{' (diverged)' if std.diverged else ''}, BN {_pct(_acc(bn))}, "
                       f"BN + noise {_pct(_acc(noisy))}{beside}")

    def moves_more(seed: int) -> tuple[bool, str] | None:
        parts, holds = [], True
        for layer in config.trace_layers:
            noisy, std = trace(records, seed, "bn_noise", layer), trace(records, seed, "standard", layer)
            if noisy is None or std is None:
                return None
            a, b = median_step_change(noisy["p50"]), median_step_change(std["p50"])
            bn = trace(records, seed, "bn", layer)
            holds &= a > b
            parts.append(f"layer {layer}: {_g(a)} with BN + noise, {_g(b)} Standard"
                         + (f", {_g(median_step_change(bn['p50']))} BN" if bn is not None else ""))
        return holds, "; ".join(parts)

    def noise_hurts(seed: int) -> tuple[bool, str] | None:
        got = _finals(records, seed, "standard", "noise")
        if got is None:
            return None
        std, noisy = got
        holds = noisy.diverged or _acc(noisy) <= _acc(std) - NOISE_HURTS
        return holds, (f"Standard + noise {'diverged' if noisy.diverged else _pct(_acc(noisy))}, Standard "
                       f"{_pct(_acc(std))}")

    window = f"mean over the last {config.eval_every} steps, train mode"
    return [
        _per_seed(f"(a) BN + noise trains about as well as BN: final training accuracy within "
                  f"{100 * NOISE_MARGIN:g} pp, or training loss within {100 * NOISE_LOSS_RATIO:g}% ({window}).",
                  seeds, "the BN and BN + noise CNNs", as_good,
                  f"|difference| ≤ {100 * NOISE_MARGIN:g} pp or loss ratio within 1 ± {NOISE_LOSS_RATIO:g} needed"),
        _per_seed(f"(a) BN and BN + noise both train better than Standard: final training accuracy at least "
                  f"{100 * BETTER_MARGIN:g} pp higher at the same step budget (Standard at lr {config.lr:g}, the BN "
                  f"networks at lr {config.bn_lr:g}).", seeds,
                  "the Standard, BN and BN + noise CNNs", better, f"+{100 * BETTER_MARGIN:g} pp needed for both"),
        _per_seed("(a) Yet BN + noise's distributions move more than Standard's: the median over training of "
                  f"|Δ median| of unit {config.unit}'s pre-activation between consecutive traced steps (every "
                  f"{config.trace_every}), larger in each traced layer.", seeds,
                  "the Standard and BN + noise CNNs", moves_more, "BN + noise larger in every layer needed"),
        _per_seed(f"(a) The same noise without BN trains much worse: Standard + noise ends at least "
                  f"{100 * NOISE_HURTS:g} pp below Standard, or diverges.", seeds,
                  "the Standard and Standard + noise CNNs", noise_hurts,
                  f"≤ Standard − {100 * NOISE_HURTS:g} pp or diverged needed"),
    ]


def _bn_of(config: SanturkarConfig, net: str) -> str:
    """The BN variant compared with Standard on ``net`` in parts (b) and (c): at Standard's learning rate."""
    return probed(config)[1] if net == "cnn" else "bn"


def _pair(config: SanturkarConfig, records: Records, seed: int, net: str,
          get: Callable[..., Any]) -> tuple[Any, Any] | None:
    std, bn = get(records, seed, net, "standard"), get(records, seed, net, _bn_of(config, net))
    return None if std is None or bn is None else (std, bn)


def _ics_claims(config: SanturkarConfig, records: Records, seeds: list[int]) -> list[Claim]:
    claims = []
    for net in ("cnn", "dln"):
        if net == "dln" and not config.dln:
            claims.append(Claim("(b) BN does not reduce ICS on the deep linear network.", "not judged",
                                "the run did not train the DLN (dln = false)."))
            continue

        def relative(seed: int, net: str = net) -> tuple[bool, str] | None:
            pair = _pair(config, records, seed, net, ics_series)
            if pair is None:
                return None
            std, bn = (_nanmedian(s.relative) for s in pair)
            return bn >= ICS_RATIO * std, f"median ‖G − G'‖/‖G‖ {_g(bn)} with BN, {_g(std)} Standard " \
                                          f"(ratio {_g(bn / std if std else math.inf)})"

        claims.append(_per_seed(
            f"(b) BN does not reduce internal covariate shift measured through gradients (Definition 2.1) on "
            f"{_net_label(config, net)}: median over training and layers of ‖G − G'‖₂ / ‖G‖₂, BN at least "
            f"{ICS_RATIO:g} × Standard's.", seeds, f"the Standard and BN {net.upper()}s", relative,
            f"ratio ≥ {ICS_RATIO:g} needed"))

    def cosine(seed: int) -> tuple[bool, str] | None:
        parts, holds, any_net = [], True, False
        for net in ("cnn", "dln"):
            pair = _pair(config, records, seed, net, ics_series)
            if pair is None:
                continue
            any_net = True
            std, bn = (_nanmedian(s.cosine) for s in pair)
            holds &= bn <= std + COSINE_MARGIN
            parts.append(f"{net.upper()}: {bn:.3f} with BN, {std:.3f} Standard")
        return (holds, "; ".join(parts)) if any_net else None

    claims.append(_per_seed(
        f"(b) Nor does BN make G' more aligned with G: median cos(G, G') with BN at most Standard's + "
        f"{COSINE_MARGIN:g}, on each network.", seeds, "a Standard and BN pair", cosine,
        f"≤ Standard + {COSINE_MARGIN:g} needed"))
    statement = "(b) On the deep linear network, BN's ICS is at least Standard's (median ‖G − G'‖₂)."
    if not config.dln:
        return [*claims, Claim(statement, "not judged", "the run did not train the DLN (dln = false).")]

    def dln_larger(seed: int) -> tuple[bool, str] | None:
        pair = _pair(config, records, seed, "dln", ics_series)
        if pair is None:
            return None
        std, bn = (float(np.median(s.l2)) for s in pair)
        return bn >= std, f"median ‖G − G'‖₂ {_g(bn)} with BN, {_g(std)} Standard"

    return [*claims, _per_seed(statement, seeds, "the Standard and BN DLNs", dln_larger, "BN ≥ Standard needed")]


def _landscape_claims(config: SanturkarConfig, records: Records, seeds: list[int]) -> list[Claim]:
    def series(seed: int) -> tuple[Any, Any] | None:
        std = landscape_series(records, seed, "cnn", "standard", config.etas)
        bn = landscape_series(records, seed, "cnn", _bn_of(config, "cnn"), config.etas)
        return None if std is None or bn is None else (std, bn)

    def rule(measure: str, ratio: float) -> Callable[[int], tuple[bool, str] | None]:
        def check(seed: int) -> tuple[bool, str] | None:
            pair = series(seed)
            if pair is None:
                return None
            std, bn = (float(np.median(getattr(s, measure)())) for s in pair)
            return bn <= ratio * std, f"median {_g(bn)} with BN, {_g(std)} Standard"
        return check

    need = "the Standard and BN CNNs at the same learning rate"
    etas = f"η from {min(config.etas):g} to {max(config.etas):g} ({len(config.etas)} steps)"
    return [
        _per_seed(f"(c) BN's loss landscape varies less along the gradient: the median over training of the range "
                  f"of L(w − η·g), {etas}, with BN at most {LOSS_RANGE_RATIO:g} × Standard's.", seeds, need,
                  rule("loss_range", LOSS_RANGE_RATIO), f"≤ {LOSS_RANGE_RATIO:g} × needed"),
        _per_seed("(c) BN's gradients are more predictive: the median over training of max_η ‖∇L(w − η·g) − g‖₂ / "
                  "‖g‖₂ with BN at most Standard's.", seeds, need, rule("predictiveness", 1.0),
                  "≤ Standard's needed"),
        _per_seed(f"(c) BN's effective β-smoothness is better: the median over training of max_η "
                  f"‖∇L(w − η·g) − g‖₂ / ‖η·g‖₂ with BN at most {BETA_RATIO:g} × Standard's.", seeds, need,
                  rule("beta", BETA_RATIO), f"≤ {BETA_RATIO:g} × needed"),
    ]


def _tables(config: SanturkarConfig, records: Records, seeds: list[int]) -> list[Table]:
    several = len(seeds) > 1
    seed_col = ["seed"] if several else []
    train_rows, ics_rows, land_rows, time_rows = [], [], [], []
    for seed in seeds:
        s = [seed] if several else []
        for variant in [*config.variants, "bn_same_lr"]:
            f = final(records, seed, "cnn", variant)
            if f is None:
                continue
            moves = []
            for layer in config.trace_layers:
                t = trace(records, seed, variant, layer)
                moves.append("—" if t is None else _g(median_step_change(t["p50"])))
            train_rows.append([*s, LABELS[variant], f"{cnn_lr(config, variant):g}", f"{f.step:,}",
                               _pct(f.train_accuracy),
                               "—" if f.train_loss is None else f"{f.train_loss:.4f}", _pct(f.test_accuracy),
                               "yes" if f.diverged else "no", *moves])
        for net in ("cnn", "dln"):
            for variant in ("standard", _bn_of(config, net)):
                ics = ics_series(records, seed, net, variant)
                if ics is not None:
                    ics_rows.append([*s, net.upper(), LABELS[variant], len(ics.steps), _g(float(np.median(ics.l2))),
                                     _g(_nanmedian(ics.relative)), f"{_nanmedian(ics.cosine):.3f}"])
        for variant in probed(config):
            land = landscape_series(records, seed, "cnn", variant, config.etas)
            if land is not None:
                land_rows.append([*s, LABELS[variant], len(land.steps), _g(float(np.median(land.loss_range()))),
                                  _g(float(np.median(land.predictiveness()))), _g(float(np.median(land.beta()))),
                                  _g(float(np.median(land.grad_norm)))])
        for r in records:
            if r["kind"] == "end" and r["seed"] == seed:
                time_rows.append([*s, r["net"].upper(), LABELS[r["variant"]], f"{r['seconds']:.1f}"])
    layers = [f"median |Δ p50|, layer {k}" for k in config.trace_layers]
    return [
        Table("(a) Training of the CNN", [*seed_col, "network", "lr", "steps", "training accuracy", "training loss",
                                          "test accuracy", "diverged", *layers], train_rows,
              note=f"Training accuracy and loss: the mean over the last {config.eval_every} steps, in train mode "
                   f"(noise on); test accuracy on {config.test_samples:,} test images in eval mode (noise off)."),
        Table("(b) Internal covariate shift through gradients", [*seed_col, "network", "variant", "probes",
                                                                "median ‖G − G'‖₂", "median ‖G − G'‖₂ / ‖G‖₂",
                                                                "median cos(G, G')"], ics_rows,
              note="Medians over every probe and every layer from the second."),
        Table("(c) The landscape along the gradient (CNN)", [*seed_col, "variant", "probes", "median loss variation",
                                                            "median max ‖Δg‖ / ‖g‖", "median β_eff", "median ‖g‖"],
              land_rows),
        Table("Training time", [*seed_col, "network", "variant", "seconds"], time_rows),
    ]


def summarize(config: SanturkarConfig, records: list[dict[str, Any]]) -> Result:
    """The verdicts, tables and summary numbers of an E2 run."""
    if not any(r["kind"] in ("eval", "end") for r in records):
        raise ValueError("the records hold no evaluation; the run was stopped before it measured anything")
    seeds = _seeds(records)
    planned = units(config)
    done = {(r["seed"], r["net"], r["variant"]) for r in records if r["kind"] == "end"}
    missing = [f"seed {s}: {u['net']} {u['variant']}" for s in seeds for u in planned
               if (s, u["net"], u["variant"]) not in done]
    claims = [*_noisy_claims(config, records, seeds), *_ics_claims(config, records, seeds),
              *_landscape_claims(config, records, seeds)]
    summary: dict[str, Any] = {"seeds": seeds, "final_train_accuracy": {}}
    for variant in config.variants:
        values = [f.train_accuracy for s in seeds if (f := final(records, s, "cnn", variant)) is not None
                  and f.train_accuracy is not None and not f.diverged]
        summary["final_train_accuracy"][variant] = float(np.mean(values)) if values else None
    return Result("santurkar", TITLE, claims, _tables(config, records, seeds), summary, complete=not missing,
                  incomplete="; ".join(f"{m} did not finish" for m in missing) or None)


def headline(result: Result) -> dict[str, str]:
    """The final training accuracy of each CNN variant (mean over seeds), for sweeps and the tour."""
    finals = result.summary.get("final_train_accuracy") or {}
    return {f"{LABELS.get(v, v)}": _pct(a) for v, a in finals.items()}
