"""E4's numbers and verdicts, from the run's records alone.

Each claim is judged on every seed and every input it applies to, and holds only where it holds in all of them;
the evidence gives the value of each (input, seed), or its worst. A claim whose networks the run did not measure
(a configuration without tanh, say) is "not judged", saying which network it needs. The thresholds are
EXPERIMENTS.md §5.D's proposals, fixed before any run (docs/experiments.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnlab.lab.experiments.variance.config import INIT_LABELS, VarianceConfig
from bnlab.lab.result import Claim, Result, Table, judged

__all__ = ["TITLE", "headline", "layer_records", "summarize"]

TITLE = "E4: vanishing and exploding signals at initialization, by initialization and activation"
VANISH_RATIO = 1e-3  # tanh + N(0, 0.01²): std(layer depth) / std(layer 1) below this
SATURATED_SHARE = 0.9  # tanh + N(0, 1): at least this share of |h| > 0.99 at the last layer
GLOROT_RANGE = (0.2, 1.0)  # tanh + Glorot: std of the last layer's activations within
HE_RANGE = (0.5, 2.0)  # ReLU + He: std ratio last / first layer within
FAN_IN_RATIO = 0.1  # ReLU + 1/fan_in (LeCun): std ratio last / first layer at most
SELU_STD, SELU_MEAN = (0.7, 1.3), 0.2  # SELU + LeCun: std within, |mean| at most, at every layer
BN_STD = (0.9, 1.1)  # with BN before the activation: pre-activation std within, at every layer
JACOBIAN = {"glorot_uniform": (0.7, 0.9), "standard": (0.4, 0.6)}  # Glorot's ≈ 0.8 and ≈ 0.5, ± 0.1

Key = tuple[int, str, str, str, bool]  # seed, input, activation, init, batch norm


def layer_records(records: Sequence[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The ``layers`` records by (seed, input, activation, init, batch norm)."""
    return {(r["seed"], r["input"], r["activation"], r["init"], r["batch_norm"]): r for r in records
            if r["kind"] == "layers"}


def _g(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.3g}"


def _ratio(values: Sequence[float | None]) -> float | None:
    first, last = values[0], values[-1]
    if first is None or last is None or first == 0:
        return None
    return last / first


def _input_name(config: VarianceConfig, input_: str) -> str:
    return "N(0, 1) inputs" if input_ == "gaussian" else f"{config.dataset} images"


def _per_network(config: VarianceConfig, nets: dict[Key, dict[str, Any]], activation: str, init: str, bn: bool,
                 value: Callable[[dict[str, Any]], float | None],
                 ok: Callable[[float], bool]) -> tuple[bool, list[str]] | None:
    """(holds everywhere, "input seed: value" texts) of ``value`` for one network over every input and seed, or
    None when the run did not measure that network."""
    found = [(k, r) for k, r in sorted(nets.items(), key=lambda kv: (kv[0][1], kv[0][0]))
             if k[2:] == (activation, init, bn)]
    if not found:
        return None
    texts, holds = [], True
    for (seed, input_, *_), record in found:
        v = value(record)
        holds &= v is not None and ok(v)
        texts.append(f"{_input_name(config, input_)}, seed {seed}: {_g(v)}")
    return holds, texts


def _claim(statement: str, need: str, parts: Sequence[tuple[str, tuple[bool, list[str]] | None]],
           threshold: str) -> Claim:
    """A claim from one or more per-network checks (each labelled); not judged if one was not measured."""
    missing = [label for label, part in parts if part is None]
    if missing:
        return Claim(statement, "not judged", f"the run did not measure {', '.join(missing)} ({need}).")
    holds = all(part[0] for _, part in parts if part is not None)
    evidence = "; ".join(f"{label}: {', '.join(part[1])}" for label, part in parts if part is not None)
    return Claim(statement, judged(holds), f"{evidence} ({threshold}).")


def _claims(config: VarianceConfig, nets: dict[Key, dict[str, Any]], records: Sequence[dict[str, Any]]) -> list[Claim]:
    d = config.depth
    need = "set activations, inits and batch_norm to include it"
    claims = [
        _claim(f"tanh with N(0, 0.01²) weights vanishes: the activations' std at layer {d} is below {VANISH_RATIO:g} "
               f"of layer 1's.", need,
               [(f"std(layer {d}) / std(layer 1), tanh + N(0, 0.01²)",
                 _per_network(config, nets, "tanh", "normal-0.01", False, lambda r: _ratio(r["h_std"]),
                              lambda v: v < VANISH_RATIO))], f"below {VANISH_RATIO:g} needed"),
        _claim(f"tanh with N(0, 1) weights saturates: at least {SATURATED_SHARE:.0%} of the units have |h| > 0.99 at "
               f"layer {d}.", need,
               [(f"share with |h| > 0.99 at layer {d}, tanh + N(0, 1)",
                 _per_network(config, nets, "tanh", "normal-1", False, lambda r: r["saturated"][-1],
                              lambda v: v >= SATURATED_SHARE))], f"at least {SATURATED_SHARE:g} needed"),
        _claim(f"Glorot's initialization keeps tanh in range: the activations' std at layer {d} is within "
               f"[{GLOROT_RANGE[0]:g}, {GLOROT_RANGE[1]:g}].", need,
               [(f"std at layer {d}, tanh + {INIT_LABELS[init]}",
                 _per_network(config, nets, "tanh", init, False, lambda r: r["h_std"][-1],
                              lambda v: GLOROT_RANGE[0] <= v <= GLOROT_RANGE[1]))
                for init in ("glorot_normal", "glorot_uniform")],
               f"within [{GLOROT_RANGE[0]:g}, {GLOROT_RANGE[1]:g}] needed"),
        _claim(f"He's initialization keeps ReLU's std within 2× over depth (std ratio layer {d} / layer 1 in "
               f"[{HE_RANGE[0]:g}, {HE_RANGE[1]:g}]), while 1/fan_in (LeCun normal) halves its variance each layer "
               f"(ratio at most {FAN_IN_RATIO:g}).", need,
               [("ratio, ReLU + He normal", _per_network(config, nets, "relu", "he_normal", False,
                                                         lambda r: _ratio(r["h_std"]),
                                                         lambda v: HE_RANGE[0] <= v <= HE_RANGE[1])),
                ("ratio, ReLU + LeCun normal", _per_network(config, nets, "relu", "lecun_normal", False,
                                                            lambda r: _ratio(r["h_std"]),
                                                            lambda v: v <= FAN_IN_RATIO)),
                ("mean variance ratio between consecutive layers, ReLU + LeCun normal (0.5 expected; reported)",
                 _per_network(config, nets, "relu", "lecun_normal", False, _layer_variance_ratio, lambda v: True))],
               f"He within [{HE_RANGE[0]:g}, {HE_RANGE[1]:g}], LeCun at most {FAN_IN_RATIO:g} needed"),
        _claim_selu(config, records),
        _claim_bn(config, nets),
        _claim_jacobian(config, records),
        _reported_gradients(config, nets),
    ]
    return claims


def _layer_variance_ratio(record: dict[str, Any]) -> float | None:
    stds = record["h_std"]
    if any(s is None or s == 0 for s in stds):
        return None
    return float(np.mean([(b / a) ** 2 for a, b in itertools.pairwise(stds)]))


def _claim_selu(config: VarianceConfig, records: Sequence[dict[str, Any]]) -> Claim:
    statement = (f"SELU with LeCun normal weights self-normalizes: over {config.selu_depth} layers, every layer's "
                 f"std is within [{SELU_STD[0]:g}, {SELU_STD[1]:g}] and |mean| at most {SELU_MEAN:g}.")
    selu = [r for r in records if r["kind"] == "selu"]
    if not selu:
        return Claim(statement, "not judged", "the run did not measure the deep SELU network.")
    holds, texts = True, []
    for r in sorted(selu, key=lambda r: (r["input"], r["seed"])):
        stds = [v if v is not None else math.nan for v in r["std"]]
        means = [abs(v) if v is not None else math.nan for v in r["mean"]]
        ok = all(SELU_STD[0] <= s <= SELU_STD[1] for s in stds) and all(m <= SELU_MEAN for m in means)
        holds &= ok
        texts.append(f"{_input_name(config, r['input'])}, seed {r['seed']}: std {min(stds):.3f}..{max(stds):.3f}, "
                     f"|mean| at most {max(means):.3f}")
    return Claim(statement, judged(holds),
                 "; ".join(texts) + f" (std within [{SELU_STD[0]:g}, {SELU_STD[1]:g}] and |mean| ≤ {SELU_MEAN:g} "
                                    f"at every layer needed).")


def _claim_bn(config: VarianceConfig, nets: dict[Key, dict[str, Any]]) -> Claim:
    statement = (f"With batch norm before the activation, every initialization gives a pre-activation std within "
                 f"[{BN_STD[0]:g}, {BN_STD[1]:g}] at every layer.")
    with_bn = {k: r for k, r in nets.items() if k[4]}
    if not with_bn:
        return Claim(statement, "not judged", "the run measured no network with batch norm (batch_norm = false).")
    values = [(k, v if v is not None else math.nan) for k, r in with_bn.items() for v in r["pre_std"]]
    low = min(values, key=lambda kv: kv[1] if not math.isnan(kv[1]) else -math.inf)
    high = max(values, key=lambda kv: kv[1] if not math.isnan(kv[1]) else math.inf)
    bad = [k for k, v in values if not BN_STD[0] <= v <= BN_STD[1]]
    without = [v for k, r in nets.items() if not k[4] for v in r["pre_std"] if v is not None]
    contrast = (f"; without BN the same layers' pre-activation std spans {min(without):.3g}..{max(without):.3g}"
                if without else "")

    def name(k: Key) -> str:
        return f"{k[2]} + {INIT_LABELS[k[3]]} on {_input_name(config, k[1])}, seed {k[0]}"

    failing = f"; outside the range: {len(set(bad))} network(s), e.g. {name(bad[0])}" if bad else ""
    return Claim(statement, "not reproduced" if bad else "reproduced",
                 f"{len(with_bn)} networks × {config.depth} layers: pre-activation std from {low[1]:.4f} "
                 f"({name(low[0])}) to {high[1]:.4f} ({name(high[0])}){failing}{contrast} (within "
                 f"[{BN_STD[0]:g}, {BN_STD[1]:g}] at every layer needed).")


def _claim_jacobian(config: VarianceConfig, records: Sequence[dict[str, Any]]) -> Claim:
    statement = (f"Glorot & Bengio: in a {config.jacobian_depth}-layer tanh net the mean singular value of the "
                 f"Jacobian between layers is about 0.8 with the normalized initialization (Glorot uniform) and "
                 f"about 0.5 with the standard U[±1/√n] (judged ± 0.1).")
    jac = [r for r in records if r["kind"] == "jacobian"]
    if not jac:
        return Claim(statement, "not judged", "the run did not measure the Jacobians.")
    holds, texts = True, []
    for r in sorted(jac, key=lambda r: (r["init"], r["seed"])):
        values = [v for v in r["singular"] if v is not None]
        mean = float(np.mean(values)) if values else math.nan
        low, high = JACOBIAN[r["init"]]
        holds &= low <= mean <= high
        texts.append(f"{INIT_LABELS[r['init']]}, seed {r['seed']}: {mean:.3f} (per layer "
                     f"{', '.join(f'{v:.3f}' for v in values)}; within [{low:g}, {high:g}] needed)")
    return Claim(statement, judged(holds), "; ".join(texts) + ".")


def _reported_gradients(config: VarianceConfig, nets: dict[Key, dict[str, Any]]) -> Claim:
    inputs = [i for i in config.inputs if any(k[1] == i for k in nets)]
    statement = ("Back-propagated gradients (Glorot & Bengio's Fig. 7; reported, no threshold): the std of ∂L/∂z at "
                 f"layer 1 over layer {config.depth}, tanh, per initialization, without and with batch norm.")
    parts = []
    for init in config.inits:
        sides = []
        for bn in (False, True):
            per_input = []
            for input_ in inputs:
                ratios = [_ratio(r["g_std"][::-1]) for k, r in nets.items() if k[1:] == (input_, "tanh", init, bn)]
                if ratios:
                    per_input.append("not finite" if any(v is None for v in ratios)
                                     else f"{np.mean([v for v in ratios if v is not None]):.3g}")
            sides.append(" / ".join(per_input))
        if any(sides):
            parts.append(f"{INIT_LABELS[init]}: {sides[0] or '—'} without BN, {sides[1] or '—'} with")
    if not parts:
        return Claim(statement, "not judged", "the run measured no tanh network.")
    where = " / ".join(_input_name(config, i) for i in inputs)
    return Claim(statement, "reported", f"({where}; mean over seeds) " + "; ".join(parts)
                 + ". 1 means the gradient keeps its size from the top layer down to the first.")


def _stat(nets: dict[Key, dict[str, Any]], input_: str, activation: str, init: str, bn: bool,
          value: Callable[[dict[str, Any]], float | None]) -> str:
    """The mean over seeds of ``value`` for one network, as a table cell."""
    values = [value(r) for k, r in nets.items() if k[1:] == (input_, activation, init, bn)]
    if not values or any(v is None for v in values):
        return "—" if not values else "not finite"
    return f"{np.mean([v for v in values if v is not None]):.3g}"


def _tables(config: VarianceConfig, nets: dict[Key, dict[str, Any]], records: Sequence[dict[str, Any]]) -> list[Table]:
    d = config.depth
    tables = []
    for input_ in config.inputs:
        for bn in config.batch_norm:
            rows = []
            for act in config.activations:
                for init in config.inits:
                    def cell(f: Callable[[dict[str, Any]], float | None], act: str = act, init: str = init,
                             input_: str = input_, bn: bool = bn) -> str:
                        return _stat(nets, input_, act, init, bn, f)
                    row = [act, INIT_LABELS[init]]
                    if bn:
                        row.append(cell(lambda r: min(v for v in r["pre_std"] if v is not None)) + " – "
                                   + cell(lambda r: max(v for v in r["pre_std"] if v is not None)))
                    row += [cell(lambda r: r["h_std"][0]), cell(lambda r: r["h_std"][-1]),
                            cell(lambda r: _ratio(r["h_std"])),
                            cell(lambda r: r["saturated"][-1]) if act in ("tanh", "sigmoid") else "",
                            cell(lambda r: r["g_std"][0]), cell(lambda r: r["g_std"][-1])]
                    rows.append(row)
            columns = ["activation", "initialization", *(["pre-activation std, all layers"] if bn else []),
                       "std h, layer 1", f"std h, layer {d}", "ratio", f"saturated at {d}", "std ∂L/∂z, layer 1",
                       f"std ∂L/∂z, layer {d}"]
            title = (f"{_input_name(config, input_)}, {'with BN before the activation' if bn else 'without BN'} "
                     f"(mean over seeds)")
            tables.append(Table(title, columns, rows))
    selu = [r for r in records if r["kind"] == "selu"]
    if selu:
        marks = sorted({1, 10, config.selu_depth // 2, config.selu_depth} & set(range(1, config.selu_depth + 1)))
        tables.append(Table(f"SELU + LeCun normal, {config.selu_depth} layers", [
            "input", "seed", "std min – max", "|mean| max", *(f"std at {m}" for m in marks)], [
            [_input_name(config, r["input"]), r["seed"], f"{min(_nums(r['std'])):.3f} – {max(_nums(r['std'])):.3f}",
             f"{max(abs(v) for v in _nums(r['mean'])):.3f}", *(_g(r["std"][m - 1]) for m in marks)]
            for r in sorted(selu, key=lambda r: (r["input"], r["seed"]))]))
    jac = [r for r in records if r["kind"] == "jacobian"]
    if jac:
        tables.append(Table(f"Mean singular value of the Jacobian ∂h(i+1)/∂h(i), tanh, {config.jacobian_depth} layers "
                            f"of {config.jacobian_width}", [
                                "initialization", "seed", *(f"{i} → {i + 1}" for i in range(1, config.jacobian_depth)),
                                "mean"],
                            [[INIT_LABELS[r["init"]], r["seed"], *(_g(v) for v in r["singular"]),
                              f"{np.mean(_nums(r['singular'])):.3f}"] for r in sorted(jac, key=lambda r: r["init"])]))
    return tables


def _nums(values: Sequence[float | None]) -> list[float]:
    return [v if v is not None else math.nan for v in values]


def summarize(config: VarianceConfig, records: list[dict[str, Any]]) -> Result:
    """The verdicts and tables of an E4 run, from the units that finished."""
    measured = [r for r in records if r["kind"] in ("layers", "selu", "jacobian")]
    if not measured:
        raise ValueError("the records hold no measurement; the run was stopped before it measured anything")
    nets = layer_records(records)
    # Which units of work did not finish, the runner's records say (bnlab.lab.report marks the result).
    return Result(experiment="variance", title=TITLE, claims=_claims(config, nets, records),
                  tables=_tables(config, nets, records),
                  summary={"networks": len(nets), "seeds": sorted({r["seed"] for r in measured})})


def headline(result: Result) -> dict[str, str]:
    return {"networks": str(result.summary.get("networks", "—"))}
