"""E5's numbers and verdicts, from the run's records alone.

Each claim is judged on every seed and holds only where it holds on all of them. The thresholds are
EXPERIMENTS.md §6.D's proposals and issue 12's classifier bar, fixed before any run (docs/experiments.md). The
claims about samples lean on the reference classifier: where it falls short of its bar they are "not judged".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bnlab.lab.experiments.dcgan_modes.config import GENERATOR_LABELS, MODE_LABELS, MODES, DcganConfig
from bnlab.lab.result import Claim, Result, Table, judged

__all__ = ["TITLE", "by_key", "classes_used", "headline", "summarize"]

TITLE = "E5: a DCGAN's samples in train mode, in eval mode and after recalibration (seed 000's train()/eval() pitfall)"
CONFIDENCE_MIN = 0.8  # §6.D claim 1: mean max-softmax of the samples at least this
CLASS_SHARE_MIN = 0.03  # §6.D claim 1: a class counts as produced with at least this share of the samples ...
CLASSES_USED_MIN = 8  # ... and at least this many classes must be produced (of 10)
BATCH_DIFF_MIN = 1e-3  # §6.D claim 2: train mode, max |G(z_a | batch 1) − G(z_a | batch 2)| above this
IS_TOLERANCE = 0.10  # §6.D claim 3: the recalibrated IS analogue within 10% of train mode's
FD_RATIO_MAX = 1.25  # §6.D claim 3: the recalibrated Fréchet distance at most 1.25 × train mode's
CLASSIFIER_MIN = 0.88  # issue 12: the reference classifier's test accuracy at least this (Fashion-MNIST's bar)
LAST_SHARE = 0.1  # the "final" losses: the mean over the last 10% of the loss curve


def by_key(records: Sequence[dict[str, Any]], kind: str, *fields: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The records of ``kind`` by the values of ``fields`` (e.g. seed, generator, mode)."""
    return {tuple(r[f] for f in fields): r for r in records if r["kind"] == kind}


def classes_used(histogram: Sequence[int]) -> int:
    """How many classes hold at least CLASS_SHARE_MIN of the samples."""
    total = sum(histogram)
    return sum(1 for c in histogram if total and c / total >= CLASS_SHARE_MIN)


def _seeds(records: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({r["seed"] for r in records if r["kind"] == "mode"})


def _classifier_problem(records: Sequence[dict[str, Any]]) -> str | None:
    """Why the classifier's scores cannot judge a claim, or None when they can."""
    found = [r for r in records if r["kind"] == "classifier"]
    if not found:
        return "the run holds no reference classifier record"
    accuracy = min(r["test_accuracy"] for r in found)
    if accuracy < CLASSIFIER_MIN:
        return (f"the reference classifier reaches {accuracy:.2%} on the {found[0]['dataset']} test set, below the "
                f"{CLASSIFIER_MIN:.0%} needed for its scores to judge samples")
    return None


def _recognisable(config: DcganConfig, records: Sequence[dict[str, Any]], mode: str) -> Claim:
    statement = (f"Samples of the generator with BN in {MODE_LABELS[mode]} are recognisable: the reference "
                 f"classifier's mean confidence is at least {CONFIDENCE_MIN:g}, and at least {CLASSES_USED_MIN} of "
                 f"the 10 classes each get at least {CLASS_SHARE_MIN:.0%} of the samples.")
    modes = by_key(records, "mode", "seed", "generator", "mode")
    found = [(seed, modes[(seed, "bn", mode)]) for seed in _seeds(records) if (seed, "bn", mode) in modes]
    if not found:
        return Claim(statement, "not judged", f"the run did not sample the generator with BN in {mode} mode "
                                              f"(generators = {','.join(config.generators)}).")
    problem = _classifier_problem(records)
    if problem:
        return Claim(statement, "not judged", problem + ".")
    holds, texts = True, []
    for seed, r in found:
        used = classes_used(r["histogram"])
        holds &= r["confidence"] >= CONFIDENCE_MIN and used >= CLASSES_USED_MIN
        texts.append(f"seed {seed}: confidence {r['confidence']:.3f}, {used} classes ≥ {CLASS_SHARE_MIN:.0%} "
                     f"(IS {r['inception_score']:.2f})")
    real = [r for r in records if r["kind"] == "real"]
    context = (f"; real images: confidence {np.mean([r['confidence'] for r in real]):.3f}, IS "
               f"{np.mean([r['inception_score'] for r in real]):.2f}" if real else "")
    return Claim(statement, judged(holds), "; ".join(texts) + context + f" ({found[0][1]['samples']} samples; "
                 f"confidence ≥ {CONFIDENCE_MIN:g} and ≥ {CLASSES_USED_MIN} classes needed).")


def _batch_claim(records: Sequence[dict[str, Any]]) -> Claim:
    statement = (f"Only train mode makes a sample depend on its companions in the batch: with the BN generator, "
                 f"G(z_a) computed beside two different batches differs by more than {BATCH_DIFF_MIN:g} in train "
                 f"mode and is bit-identical in eval mode.")
    tests = by_key(records, "batch", "seed", "generator", "mode")
    seeds = sorted({k[0] for k in tests if k[1] == "bn"})
    if not seeds:
        return Claim(statement, "not judged", "the run did not test the generator with BN.")
    holds, texts = True, []
    for seed in seeds:
        train, ev = tests.get((seed, "bn", "train")), tests.get((seed, "bn", "eval"))
        if train is None or ev is None:
            return Claim(statement, "not judged", f"seed {seed} lacks a train or eval mode test.")
        holds &= train["max_abs_diff"] > BATCH_DIFF_MIN and ev["identical"]
        texts.append(f"seed {seed}: train mode max |Δ| {train['max_abs_diff']:.3g}, eval mode "
                     f"{'bit-identical' if ev['identical'] else 'max |Δ| ' + format(ev['max_abs_diff'], '.3g')}")
    plain = [r for k, r in tests.items() if k[1] == "plain"]
    control = ("; without BN (control): " + ", ".join(
        f"seed {r['seed']} {r['mode']} {'bit-identical' if r['identical'] else format(r['max_abs_diff'], '.3g')}"
        for r in sorted(plain, key=lambda r: (r["seed"], r["mode"])))) if plain else ""
    return Claim(statement, judged(holds), "; ".join(texts) + control + ".")


def _gap_text(train: dict[str, Any], other: dict[str, Any]) -> str:
    fd = "" if train["frechet"] is None or other["frechet"] is None else \
        f", FD {other['frechet']:.3g} against {train['frechet']:.3g} ({other['frechet'] / train['frechet']:.2f}×)"
    return (f"IS {other['inception_score']:.3g} against {train['inception_score']:.3g} "
            f"({other['inception_score'] / train['inception_score'] - 1:+.1%}){fd}, confidence "
            f"{other['confidence']:.3f} against {train['confidence']:.3f}")


def _within(train: dict[str, Any], other: dict[str, Any]) -> bool:
    """Claim 4's test: ``other``'s IS analogue within IS_TOLERANCE of train mode's, its FD at most FD_RATIO_MAX ×."""
    return (abs(other["inception_score"] / train["inception_score"] - 1) <= IS_TOLERANCE
            and train["frechet"] is not None and other["frechet"] is not None
            and other["frechet"] <= FD_RATIO_MAX * train["frechet"])


def _recalibration_claim(records: Sequence[dict[str, Any]]) -> Claim:
    statement = (f"Recalibration closes most of the gap between eval and train mode: after bnlab.recalibrate, the "
                 f"eval-mode IS analogue is within {IS_TOLERANCE:.0%} of train mode's and the Fréchet distance at "
                 f"most {FD_RATIO_MAX:g}× train mode's.")
    modes = by_key(records, "mode", "seed", "generator", "mode")
    seeds = [s for s in _seeds(records) if (s, "bn", "train") in modes and (s, "bn", "recalibrated") in modes]
    if not seeds:
        return Claim(statement, "not judged", "the run did not sample the generator with BN in train and "
                                              "recalibrated modes.")
    problem = _classifier_problem(records)
    if problem:
        return Claim(statement, "not judged", problem + ".")
    holds, texts = True, []
    for seed in seeds:
        train, recal, ev = modes[(seed, "bn", "train")], modes[(seed, "bn", "recalibrated")], \
            modes.get((seed, "bn", "eval"))
        holds &= _within(train, recal)
        closed = ""
        if ev is not None and _within(train, ev):
            closed = ("; eval mode was already within these tolerances of train mode (" + _gap_text(train, ev)
                      + "), so there was no gap for recalibration to close in this run")
        elif ev is not None and None not in (ev["frechet"], train["frechet"], recal["frechet"]):
            gap = ev["frechet"] - train["frechet"]
            closed = (f"; of the raw eval-mode FD gap {gap:.3g}, {(ev['frechet'] - recal['frechet']) / gap:.0%} "
                      f"closed" if gap > 0 else "")
        texts.append(f"seed {seed}: recalibrated {_gap_text(train, recal)}{closed}")
    return Claim(statement, judged(holds), "; ".join(texts) + f" (IS within {IS_TOLERANCE:.0%} and FD ≤ "
                                                              f"{FD_RATIO_MAX:g}× needed).")


def _raw_gap(records: Sequence[dict[str, Any]]) -> Claim:
    statement = ("The raw eval-mode gap (reported, no threshold: it varies by run from \"same quality\" to "
                 "\"noise\"): the BN generator's samples with the running statistics training left, against train "
                 "mode's; and with a batch of one in train mode.")
    modes = by_key(records, "mode", "seed", "generator", "mode")
    texts = []
    for seed in _seeds(records):
        train = modes.get((seed, "bn", "train"))
        if train is None:
            continue
        for mode in ("eval", "train-batch1"):
            other = modes.get((seed, "bn", mode))
            if other is not None:
                verdict = "same quality by claim 4's tolerances" if _within(train, other) else "worse"
                texts.append(f"seed {seed}, {mode}: {_gap_text(train, other)} ({verdict})")
    if not texts:
        return Claim(statement, "not judged", "the run did not sample the generator with BN.")
    return Claim(statement, "reported", "; ".join(texts) + ".")


def final_losses(records: Sequence[dict[str, Any]], seed: int, generator: str) -> dict[str, float] | None:
    """Mean D and G losses and D's outputs over the last LAST_SHARE of a GAN's loss curve (None if not logged)."""
    rows = sorted((r for r in records if r["kind"] == "losses" and r["seed"] == seed and r["generator"] == generator),
                  key=lambda r: r["step"])
    if not rows:
        return None
    tail = rows[-max(1, round(LAST_SHARE * len(rows))):]
    out = {}
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        values = [r[f"train_{key}"] for r in tail if r[f"train_{key}"] is not None]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _seed000(config: DcganConfig, records: Sequence[dict[str, Any]]) -> Claim:
    statement = ("Seed 000's comparison (reported): the generator with BN against the one without, each with its own "
                 "discriminator from the same start; the blog saw sharper samples with BN, a higher discriminator "
                 "loss and a lower generator loss.")
    modes = by_key(records, "mode", "seed", "generator", "mode")
    texts = []
    for seed in _seeds(records):
        parts = []
        for gen in ("bn", "plain"):
            r, losses = modes.get((seed, gen, "train")), final_losses(records, seed, gen)
            if r is None or losses is None:
                continue
            fd = "" if r["frechet"] is None else f", FD {r['frechet']:.3g}"
            parts.append(f"{GENERATOR_LABELS[gen]}: confidence {r['confidence']:.3f}, IS {r['inception_score']:.2f}"
                         f"{fd}, final D loss {losses['loss_d']:.3f}, G loss {losses['loss_g']:.3f}")
        if len(parts) == 2:
            texts.append(f"seed {seed}: " + "; ".join(parts))
    if not texts:
        why = ("the run did not train both generators (generators = bn,plain)" if len(set(config.generators)) < 2
               else "the run has not finished both generators yet (bnlab resume continues it)")
        return Claim(statement, "not judged", why + ".")
    return Claim(statement, "reported", " | ".join(texts) + f" (final: mean over the last {LAST_SHARE:.0%} of the "
                                                           f"steps).")


def _doctor_claim(records: Sequence[dict[str, Any]]) -> Claim:
    statement = ("bnlab doctor on the BN generator in eval mode, as it would sample after eval() (reported; its "
                 "grouped findings are in the table below).")
    found = sorted((r for r in records if r["kind"] == "doctor"), key=lambda r: r["seed"])
    if not found:
        return Claim(statement, "not judged", "the run did not examine a generator with BN.")
    return Claim(statement, "reported", " | ".join(f"seed {r['seed']}: {r['summary']}" for r in found))


def _tables(config: DcganConfig, records: Sequence[dict[str, Any]]) -> list[Table]:
    rows = []
    for r in sorted((r for r in records if r["kind"] == "real"), key=lambda r: r["seed"]):
        rows.append([r["seed"], "real images", "—", *_score_cells(r)])
    order = {m: i for i, m in enumerate(MODES)}
    for r in sorted((r for r in records if r["kind"] == "mode"),
                    key=lambda r: (r["seed"], r["generator"] != "bn", order[r["mode"]])):
        rows.append([r["seed"], GENERATOR_LABELS[r["generator"]], r["mode"], *_score_cells(r)])
    tables = [Table("Samples scored by the reference classifier",
                    ["seed", "images", "mode", "confidence", "IS analogue", "Fréchet distance",
                     f"classes ≥ {CLASS_SHARE_MIN:.0%}", "class histogram"], rows,
                    note="Real images: as many training images as samples, the floor of each score. The Fréchet "
                         "distance is to the test images' features.")]
    tests = sorted((r for r in records if r["kind"] == "batch"), key=lambda r: (r["seed"], r["generator"], r["mode"]))
    tables.append(Table("Batch dependence: G(z_a) beside two different companion batches",
                        ["seed", "generator", "mode", "max |difference|", "bit-identical"],
                        [[r["seed"], GENERATOR_LABELS[r["generator"]], r["mode"], f"{r['max_abs_diff']:.3g}",
                          "yes" if r["identical"] else "no"] for r in tests]))
    training = []
    for r in sorted((r for r in records if r["kind"] == "end"), key=lambda r: (r["seed"], r["generator"])):
        losses = final_losses(records, r["seed"], r["generator"]) or {}
        training.append([r["seed"], GENERATOR_LABELS[r["generator"]], r["steps"], "yes" if r["diverged"] else "no",
                         f"{r['seconds']:.1f}", *(f"{losses.get(k, float('nan')):.3f}"
                                                   for k in ("loss_d", "loss_g", "d_real", "d_fake"))])
    tables.append(Table("Training", ["seed", "generator", "steps", "diverged", "seconds", "final D loss",
                                     "final G loss", "D(x)", "D(G(z))"], training,
                        note=f"Final: the mean over the last {LAST_SHARE:.0%} of the loss curve."))
    clf = [r for r in records if r["kind"] == "classifier"][:1]
    tables.append(Table("Reference classifier", ["data set", "test accuracy", "bar", "trained by this run",
                                                  "training seconds"],
                        [[r["dataset"], f"{r['test_accuracy']:.2%}", f"{CLASSIFIER_MIN:.0%}",
                          "yes" if r["made"] else "no (shared cache)", f"{r['seconds']:.1f}"] for r in clf],
                        note="A small CNN without batch norm, trained once per data set and kept in the lab's shared "
                             "cache ($BNLAB_CACHE)."))
    for r in sorted((r for r in records if r["kind"] == "doctor"), key=lambda r: r["seed"]):
        findings = r["findings"] if isinstance(r["findings"], list) else []
        rows = [[f.get("kind", ""), f.get("severity", ""), f.get("layer", ""), f"{f.get('measure', '')}: "
                 f"{f.get('value', '')}", f.get("detail", ""), f.get("fix", "")] for f in findings
                if isinstance(f, dict)]
        tables.append(Table(f"bnlab doctor's findings on the generator with BN in eval mode (seed {r['seed']})",
                            ["kind", "severity", "layer", "measure", "evidence", "fix"],
                            rows or [["no findings", "", "", "", "batch norm looks healthy on this data", ""]],
                            note=r["summary"]))
    return tables


def _score_cells(r: dict[str, Any]) -> list[Any]:
    fd = "—" if r["frechet"] is None else f"{r['frechet']:.3g}"
    return [f"{r['confidence']:.3f}", f"{r['inception_score']:.2f}", fd, classes_used(r["histogram"]),
            " ".join(str(int(c)) for c in r["histogram"])]


def summarize(config: DcganConfig, records: list[dict[str, Any]]) -> Result:
    """The claims, the tables, and the doctor's text (in ``summary``), from the records of every seed."""
    if not any(r["kind"] in ("mode", "classifier") for r in records):
        raise ValueError("the run holds no measurement yet (no classifier or mode record)")
    claims = [_recognisable(config, records, "train"), _recognisable(config, records, "recalibrated"),
              _batch_claim(records), _recalibration_claim(records), _raw_gap(records), _seed000(config, records),
              _doctor_claim(records)]
    ends = [r for r in records if r["kind"] == "end"]
    planned = {(s, g) for s in {r["seed"] for r in records if r["kind"] == "classifier"} for g in config.generators}
    measured = {(r["seed"], r["generator"]) for r in records if r["kind"] == "mode" and r["mode"] == MODES[-1]}
    missing = sorted(planned - measured)
    summary: dict[str, Any] = {"doctor": {str(r["seed"]): r["text"] for r in records if r["kind"] == "doctor"}}
    modes = by_key(records, "mode", "seed", "generator", "mode")
    for mode in MODES:
        values = [r["inception_score"] for k, r in modes.items() if k[1:] == ("bn", mode)]
        if values:
            summary[f"is_{mode}"] = float(np.mean(values))
    return Result("dcgan_modes", TITLE, claims, _tables(config, records), summary=summary,
                  complete=not missing and not any(r["diverged"] for r in ends),
                  incomplete=("not measured: " + ", ".join(f"seed {s} {g}" for s, g in missing)) if missing else
                  ("a GAN's losses stopped being finite" if any(r["diverged"] for r in ends) else None))


def headline(result: Result) -> dict[str, str]:
    """The BN generator's IS analogue in train, eval and recalibrated modes (mean over seeds)."""
    labels = {"train": "IS train", "eval": "IS eval", "recalibrated": "IS recalibrated"}
    return {label: f"{result.summary[f'is_{mode}']:.2f}" for mode, label in labels.items()
            if isinstance(result.summary.get(f"is_{mode}"), int | float)}
