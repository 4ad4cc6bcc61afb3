"""The doctor's findings: one function per problem, each turning observations into :class:`Finding` objects.

The thresholds are stated here, with the reason for each, so that a finding can be argued with. What each kind is
called, the number that matters and the fix said once per kind are in :mod:`bnlab.tools.diagnosis.kinds`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnlab.tools._layers import NormLayer, batch_norm_layers, has_running_stats, running_stats
from bnlab.tools.diagnosis.kinds import CODES, KINDS
from bnlab.tools.diagnosis.observe import LayerObservation
from bnlab.tools.diagnosis.report import Evidence, Finding

__all__ = ["CODES"]

#: Eval-mode BN output off by this much (RMS, in units of its standard deviation; 0 is perfect): warning, error.
MISMATCH_WARNING, MISMATCH_ERROR = 0.25, 1.0
#: Values per channel in one batch below which batch statistics are noisy: the standard error of μ_B is σ/√m,
#: 18% of σ at m = 32; at m ≤ 4 a batch's variance estimate is off by a factor of 2 or more half the time.
FEW_VALUES_WARNING, FEW_VALUES_ERROR = 32, 4
#: PyTorch weighs the *new* batch by momentum (default 0.1); Keras and Flax weigh the *old* value (0.99).
KERAS_MOMENTUM = 0.9
#: Weight (1 − m)^N of the initial E[x] = 0, Var[x] = 1 still in a running average after N batches at momentum m
#: below which non-convergence is not offered as the explanation of a gap (at m = 0.1: after 29 batches or more).
NOT_CONVERGED = 0.05


def _running64(module: NormLayer) -> tuple[Tensor, Tensor] | None:
    """The running statistics in float64, or None for a layer without them or with non-finite ones."""
    if not has_running_stats(module):
        return None
    mean, var = (t.detach().double() for t in running_stats(module))
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or (var < 0).any():
        return None  # statistics_health reports these
    return mean, var


def _finding(code: str, severity: str, layer: str, message: str, evidence: Evidence, detail: str,
             fix: str | None = None) -> Finding:
    return Finding(code, severity, layer, message, evidence, KINDS[code].fix if fix is None else fix, detail)


def training_mode(model: nn.Module) -> list[Finding]:
    """The model, or a batch-norm layer in it, is in training mode: inference would use batch statistics.

    FrozenBatchNorm layers compute the same in both modes, so they do not count.
    """
    layers = batch_norm_layers(model)
    training = [name for name, m in layers if m.training]
    if not training and not (model.training and layers):
        return []
    return [_finding(
        "training_mode", "error", "",
        f"the model is in training mode ({len(training)} batch-norm layer(s) training): at inference each batch "
        f"would be normalized by its own statistics, so outputs depend on the rest of the batch, and every "
        f"forward would change the running statistics",
        {"model_training": int(model.training), "batch_norm_layers_training": len(training)},
        f"model.training={model.training}; {len(training)} of {len(layers)} batch-norm layers in training mode",
    )]


def statistics_health(obs: LayerObservation) -> list[Finding]:
    """Running statistics that are not finite, or that no training batch ever updated."""
    if not has_running_stats(obs.module):
        return []
    mean, var = (t.detach().double() for t in running_stats(obs.module))
    bad_mean, bad_var = ~torch.isfinite(mean), ~torch.isfinite(var)
    negative = var < 0
    if bad_mean.any() or bad_var.any() or negative.any():
        bad = int((bad_mean | bad_var | negative).sum())
        return [_finding(
            "stats_non_finite", "error", obs.name,
            "running statistics contain NaN, infinity or a negative variance: every output of this layer in eval "
            "mode is garbage",
            {"channels": mean.numel(), "channels_bad": bad, "nonfinite_mean": int(bad_mean.sum()),
             "nonfinite_var": int(bad_var.sum()), "negative_var": int(negative.sum())},
            f"{bad} of {mean.numel()} channels: {int(bad_mean.sum())} non-finite E[x], {int(bad_var.sum())} "
            f"non-finite Var[x], {int(negative.sum())} negative Var[x]",
        )]
    count = obs.module.num_batches_tracked
    if count is None or int(count) != 0:
        return []
    if bool((mean == 0).all() and (var == 1).all()):
        return [_finding(
            "stats_never_updated", "error", obs.name,
            "num_batches_tracked is 0 and the running statistics are still the initial E[x] = 0, Var[x] = 1: the "
            "layer never ran in training mode, so in eval mode it does not normalize at all",
            {"num_batches_tracked": 0, "running_mean_abs_max": 0.0, "running_var_min": 1.0},
            "num_batches_tracked = 0; E[x] = 0 and Var[x] = 1 in every channel: the initial values",
        )]
    return [_finding(
        "stats_never_updated", "info", obs.name,
        "num_batches_tracked is 0 although the running statistics are not the initial ones: probably a checkpoint "
        "written without the counter (PyTorch < 0.4.1) or statistics set by hand",
        {"num_batches_tracked": 0, "running_mean_abs_max": float(mean.abs().max()),
         "running_var_min": float(var.min())},
        "num_batches_tracked = 0 but the statistics are not the initial ones (an old checkpoint?)",
        "nothing to do if the statistics are right (see stats_mismatch); with momentum=None the counter matters",
    )]


# ----------------------------------------------------------------------------------------------- the train/eval gap

def _output_error(mean_d: Tensor, var_d: Tensor, mean_r: Tensor, var_r: Tensor, eps: float) -> Tensor:
    """Per channel, the RMS error of eval mode's x̂ = a·z + d against the correctly normalized z, in standard
    deviations: √((a − 1)² + d²) with a = √((Var[x] + ε)/(σ²_r + ε)) and d = (E[x] − μ_r)/√(σ²_r + ε)."""
    scale = torch.sqrt((var_d + eps) / (var_r + eps))  # a
    shift = (mean_d - mean_r) / torch.sqrt(var_r + eps)  # d
    return torch.sqrt((scale - 1).square() + shift.square())


def gap(obs: LayerObservation) -> Tensor | None:
    """(C,) the train/eval gap of the layer on this data (see :func:`_output_error`); None without data or
    usable running statistics."""
    stats = _running64(obs.module)
    if stats is None or obs.inputs.batches == 0 or obs.inputs.values < 2:
        return None
    mean_d, var_d = obs.inputs.result("pooled")
    return _output_error(mean_d, var_d, *stats, float(obs.module.eps))


def initial_weight(module: NormLayer) -> tuple[int, float, float] | None:
    """(N, m, (1 − m)^N): batches tracked, momentum, and the weight of the initial values still in the running
    average; None where that does not apply (momentum=None averages cumulatively; N = 0 is never_updated's)."""
    momentum, count = getattr(module, "momentum", None), getattr(module, "num_batches_tracked", None)
    if momentum is None or count is None or not 0 < float(momentum) <= 1 or int(count) <= 0:
        return None
    n = int(count)
    return n, float(momentum), (1 - float(momentum)) ** n


def unconverged_gap(obs: LayerObservation) -> Tensor | None:
    """(C,) how far the running statistics are from what an unconverged average *of this data* would hold:
    r·(0, 1) + (1 − r)·(E[x], Var[x]) with r = (1 − m)^N. Small: the gap is non-convergence; large: the data
    differs from the data the statistics were gathered on."""
    stats, weight = _running64(obs.module), initial_weight(obs.module)
    if stats is None or weight is None or obs.inputs.batches == 0 or obs.inputs.values < 2:
        return None
    r = weight[2]
    mean_d, var_d = obs.inputs.result("pooled")
    return _output_error((1 - r) * mean_d, r + (1 - r) * var_d, *stats, float(obs.module.eps))


def _level(error: Tensor | None) -> float | None:
    return None if error is None else float(error.mean())


def not_converged(obs: LayerObservation, error: Tensor | None, unconverged: Tensor | None) -> list[Finding]:
    """A train/eval gap that an average which has not converged explains: after N batches at momentum m,
    (1 − m)^N of the initial E[x] = 0, Var[x] = 1 is still in the running averages, and the running values are
    what such an average of this data would hold (:func:`unconverged_gap` is small).

    Statistics that fit the data raise nothing, however few the batches (recalibrated statistics count their
    batches too, and are exact); a gap the unconverged average does not explain is :func:`statistics_mismatch`'s.
    """
    weight = initial_weight(obs.module)
    measured, residual = _level(error), _level(unconverged)
    if weight is None or weight[2] < NOT_CONVERGED or measured is None or residual is None:
        return []
    if measured < MISMATCH_WARNING or residual >= MISMATCH_WARNING:
        return []
    n, m, r = weight
    return [_finding(
        "stats_not_converged", "error" if measured >= MISMATCH_ERROR else "warning", obs.name,
        f"after {n} batch(es) with momentum {m:g}, (1 − m)^N = {r:.1%} of the initial values E[x] = 0, Var[x] = 1 "
        f"is still in the running averages: in eval mode the layer's output is off by {measured:.2f} standard "
        f"deviations on this data, and an unconverged average of this data would hold almost exactly these "
        f"statistics ({residual:.2f} left): the gap is non-convergence, not data unlike the training data",
        {"num_batches_tracked": n, "momentum": m, "initial_weight": r, "output_error_mean": measured,
         "output_error_if_unconverged": residual},
        f"{n} batch(es) at momentum {m:g}; eval error {measured:.2f}σ, {residual:.2f}σ once the initial values' "
        f"share is accounted for",
    )]


def statistics_mismatch(obs: LayerObservation, error: Tensor | None, unconverged: Tensor | None) -> list[Finding]:
    """Running statistics far from this data's: the train/eval gap, measured per layer, when it is not explained
    by an average that has not converged (:func:`not_converged` reports that)."""
    level = _level(error)
    if error is None or level is None or level < MISMATCH_WARNING:
        return []
    residual = _level(unconverged)
    if residual is not None and residual < MISMATCH_WARNING:
        return []  # the unconverged average of this data explains it: stats_not_converged says so
    stats = _running64(obs.module)
    assert stats is not None  # error is not None
    mean_d, var_d = obs.inputs.result("pooled")
    eps = float(obs.module.eps)
    scale = torch.sqrt((var_d + eps) / (stats[1] + eps))
    shift = (mean_d - stats[0]) / torch.sqrt(stats[1] + eps)
    severity = "error" if level >= MISMATCH_ERROR else "warning"
    evidence: Evidence = {
        "output_error_mean": level, "output_error_median": float(error.median()),
        "output_error_max": float(error.max()),
        "mean_shift_median": float(shift.abs().median()), "std_ratio_median": float(scale.median()),
        "std_ratio_min": float(scale.min()), "std_ratio_max": float(scale.max()),
        "values_per_channel": obs.inputs.values,
    }
    weight = initial_weight(obs.module)
    # Said only where the unconverged average explains a good part of the gap: recalibrated statistics count
    # their batches too, and their N says nothing about convergence.
    partly = residual is not None and weight is not None and weight[2] >= NOT_CONVERGED and residual < 0.75 * level
    differs = "" if not partly or residual is None or weight is None else (
        f"; the running averages have not converged ({weight[2]:.0%} of the initial values left), but even an "
        f"unconverged average of this data would be off by {residual:.2f}: this data differs from the data the "
        f"statistics were gathered on")
    return [_finding(
        "stats_mismatch", severity, obs.name,
        f"the running statistics do not describe this data: in eval mode the layer's output is off by "
        f"{level:.2f} standard deviations (RMS error, mean over {error.numel()} channels; median "
        f"{float(error.median()):.2f}), the gap that makes a model do well in training and badly in eval{differs}",
        evidence,
        f"median {float(error.median()):.2f}σ, max {float(error.max()):.2f}σ over {error.numel()} channels; mean "
        f"shift {float(shift.abs().median()):.2f}σ, std ratio {float(scale.min()):.2f}–{float(scale.max()):.2f}"
        + ("" if not differs or weight is None else f"; not converged either ({weight[2]:.0%} initial values)"),
    )]


# ----------------------------------------------------------------------------------------------- training setup

def few_values(obs: LayerObservation) -> list[Finding]:
    """Too few values per channel in a typical batch for reliable batch statistics.

    Judged on the typical batch (the most common size), so that the short last batch of a data set does not
    count; batches of one value per channel (legal at inference, no variance at all) are counted in the evidence.
    """
    m = obs.inputs.typical_batch
    if m is None or m >= FEW_VALUES_WARNING:
        return []
    severity = "error" if m <= FEW_VALUES_ERROR else "warning"
    evidence: Evidence = {"values_per_channel": m, "relative_std_error_of_mean": 1 / math.sqrt(m)}
    ones = obs.inputs.sizes[1]
    if ones:
        evidence["batches_with_one_value"] = ones
    noisy = ("there is no batch variance at all (training would fail: a variance needs two values)" if m == 1 else
             f"batch statistics are noisy (the standard error of μ_B is {1 / math.sqrt(m):.0%} of σ)")
    # The remedies with this layer's numbers: renorm's bounds, and the ghost-batch size that reaches the warning
    # line if larger batches can be had (each ghost batch then has FEW_VALUES_WARNING values per channel).
    per_sample = obs.values_per_sample
    evidence["renorm_r_max"], evidence["renorm_d_max"] = 3.0, 5.0
    if per_sample:
        evidence["ghost_virtual_batch_size"] = math.ceil(FEW_VALUES_WARNING / per_sample)
    return [_finding(
        "few_values_per_channel", severity, obs.name,
        f"a typical batch gives this layer only {m} value(s) per channel: {noisy}, so training normalizes with "
        f"noisy statistics and the running averages are noisy too",
        evidence,
        f"standard error of μ_B {1 / math.sqrt(m):.0%} of σ" + (f"; {ones} batch(es) of one value" if ones else ""),
        _few_values_fix(m, per_sample),
    )]


def _few_values_fix(m: int, per_sample: int | None) -> str:
    steps = [f"batch renorm (bnlab.convert(model, to='renorm'); r_max 3, d_max 5 after bnlab.nn.renorm_schedule's "
             f"warm-up) keeps training consistent with inference at {m} value(s) per channel"]
    if per_sample:
        v = math.ceil(FEW_VALUES_WARNING / per_sample)
        steps.append(f"with larger batches, ghost batch norm (bnlab.convert(model, to='ghost', options="
                     f"{{'virtual_batch_size': {v}}})) normalizes over ghost batches of {v * per_sample} values "
                     f"per channel (standard error {1 / math.sqrt(v * per_sample):.0%} of σ) while regularizing")
    if m == 1:
        steps.insert(0, "small_batch='running' on bnlab layers normalizes batches of one value per channel with the "
                        "running statistics instead of failing")
    return "; ".join(steps) + f"; or {KINDS['few_values_per_channel'].fix}"


def keras_momentum(name: str, module: NormLayer) -> list[Finding]:
    """A momentum ≥ 0.9: the Keras convention in a PyTorch model, so the running average follows the last batch."""
    momentum = module.momentum
    if momentum is None or momentum < KERAS_MOMENTUM:
        return []
    return [_finding(
        "keras_momentum", "warning", name,
        f"momentum={momentum} looks like the Keras/Flax convention: PyTorch weighs the new batch by momentum, so "
        f"the running statistics are {momentum:.0%} the last batch's and average over about {1 / momentum:.2f} "
        f"batches instead of {1 / max(1 - momentum, 1e-12):.0f}",
        {"momentum": float(momentum), "pytorch_equivalent": round(1 - momentum, 6)},
        f"the last batch weighs {momentum:.0%}; Keras' {momentum} is PyTorch's {round(1 - momentum, 6)}",
        f"use momentum={round(1 - momentum, 6)} (Keras' {momentum} in PyTorch's convention), and recalibrate the "
        f"statistics of the trained model with bnlab.tools.recalibrate",
    )]


#: Signs of another framework's settings: Keras's default ε, and darknet's running variance, which starts at 0.
KERAS_EPS = 1e-3


def foreign_convention(name: str, module: NormLayer) -> list[Finding]:
    """ε = 1e-3 (Keras's default) or an all-zero running variance on a layer never trained (darknet's start)."""
    signs: list[str] = []
    evidence: Evidence = {}
    if math.isclose(module.eps, KERAS_EPS) and getattr(module, "convention", "torch") == "torch":
        signs.append("eps=1e-3, Keras's default (PyTorch's is 1e-5)")
        evidence["eps"] = float(module.eps)
    if has_running_stats(module) and getattr(module, "convention", "torch") != "darknet":  # darknet's own start
        mean, var = running_stats(module)
        if bool((var == 0).all()) and bool((mean == 0).all()):
            signs.append("a running variance of 0 in every channel, darknet's start (PyTorch starts at 1): in eval "
                         "this layer divides by √ε")
            evidence["running_var_max"] = 0.0
    if not signs:
        return []
    evidence["signs"] = len(signs)
    return [_finding("foreign_convention", "warning", name,
                     f"settings of another framework's batch norm: {'; '.join(signs)}", evidence, "; ".join(signs))]


def convention_set(name: str, module: NormLayer) -> list[Finding]:
    """A bnlab layer with ``convention`` other than "torch": it trains (and, under darknet, infers) by another
    framework's rules, which the tools that rebuild layers must keep or refuse."""
    convention = getattr(module, "convention", "torch")
    if convention == "torch":
        return []
    changes = ("ε outside the root in training and eval, the unbiased batch variance" if convention == "darknet"
               else "a running variance that averages the biased σ²_B")
    return [_finding("convention_set", "info", name, f"the layer follows convention={convention!r}: {changes}",
                     {"convention": convention}, f"convention={convention!r}")]


def after_dropout(obs: LayerObservation, variance_ratio: float | None) -> list[Finding]:
    """Dropout upstream of batch norm: its variance differs between training and eval (the variance shift)."""
    if not obs.dropouts_upstream:
        return []
    names = ", ".join(f"{n!r} (p={p:g})" for n, p in obs.dropouts_upstream.items())
    evidence: Evidence = {"dropout": names}
    if variance_ratio is not None:
        evidence["input_variance_ratio_train_vs_eval"] = variance_ratio
    shown = "" if variance_ratio is None else (
        f"; here its input variance is {variance_ratio:.2f}× larger with dropout on than off")
    return [_finding(
        "bn_after_dropout", "warning", obs.name,
        f"batch norm downstream of dropout: the running variance is learned with dropout on, and used with it off"
        f"{shown}",
        evidence,
        f"downstream of {names}" + ("" if variance_ratio is None else
                                    f"; input variance {variance_ratio:.2f}× with dropout on"),
    )]


def reused(obs: LayerObservation) -> list[Finding]:
    """One batch-norm module called more than once per forward."""
    if obs.max_calls_per_forward <= 1:
        return []
    return [_finding(
        "bn_reused", "warning", obs.name,
        f"the module runs {obs.max_calls_per_forward} times per forward: its running statistics average the "
        f"distributions of all its uses, and in training each call counts as a batch",
        {"calls_per_forward": obs.max_calls_per_forward},
        f"called {obs.max_calls_per_forward} times per forward; its statistics mix every use",
    )]


def bias_before(obs: LayerObservation) -> list[Finding]:
    """A conv or linear bias right before batch norm: the normalization subtracts it again."""
    return [_finding(
        "bias_before_bn", "info", obs.name,
        f"layer {producer!r} has a bias and feeds this batch norm directly: subtracting the mean removes it, so "
        f"it only costs parameters and time (β plays its role)",
        {"layer_with_bias": producer, "bias_abs_mean": bias},
        f"{producer!r} has a bias (mean |b| {bias:.3g}) that the normalization subtracts",
        f"build layer {producer!r} with bias=False",
    ) for producer, bias in obs.biased_producers.items()]


# ----------------------------------------------------------------------------------------------- the data

def data_non_finite(bad: dict[int, tuple[int, int]], batches: int) -> list[Finding]:
    """Batches whose inputs hold NaN or infinities: ``bad`` maps a batch index to its (NaN, infinite) counts."""
    if not bad:
        return []
    nan, inf = sum(n for n, _ in bad.values()), sum(i for _, i in bad.values())
    where = _batch_list(sorted(bad), batches)
    return [_finding(
        "data_non_finite", "error", "",
        f"{where} hold{'s' if len(bad) == 1 else ''} non-finite values in the inputs ({nan} NaN, {inf} infinite): "
        f"they would turn every statistic they reach into NaN, so the doctor left them out",
        {"batches": len(bad), "first_batch": min(bad) + 1, "non_finite_values": nan + inf, "nan": nan, "inf": inf},
        f"{where}: {nan} NaN and {inf} infinite input values",
    )]


def activations_non_finite(first_seen: dict[str, list[int]], batches: int) -> list[Finding]:
    """Finite batches that become NaN or infinite inside the model: ``first_seen`` maps the batch-norm layer that
    first received non-finite values to the (0-based) batches in which it did."""
    return [_finding(
        "activations_non_finite", "error", layer,
        f"the model turns finite inputs into NaN or infinity before this layer ({_batch_list(seen, batches)}): "
        f"something upstream overflows or divides by zero; those batches were left out of this layer's statistics "
        f"and of every layer after it",
        {"batches": len(seen), "first_batch": seen[0] + 1},
        f"first batch-norm input with NaN/inf, in {_batch_list(seen, batches)}",
    ) for layer, seen in first_seen.items()]


def _batch_list(indices: list[int], batches: int) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
    return f"batch{'es' if len(indices) > 1 else ''} {shown} of {batches}"
