"""The doctor's findings: one function per problem, each turning observations into :class:`Finding` objects.

The thresholds are stated here, with the reason for each, so that a finding can be argued with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnlab.tools._layers import NormLayer, batch_norm_layers, has_running_stats, running_stats
from bnlab.tools.diagnosis.observe import LayerObservation
from bnlab.tools.diagnosis.report import Evidence, Finding

#: Every finding the doctor can report, with its severity (or severities).
CODES = {
    "training_mode": "error",
    "stats_non_finite": "error",
    "stats_never_updated": "error or info",
    "stats_mismatch": "warning or error",
    "few_values_per_channel": "warning or error",
    "keras_momentum": "warning",
    "bn_after_dropout": "warning",
    "bn_reused": "warning",
    "bias_before_bn": "info",
}

#: Eval-mode BN output off by this much (RMS, in units of its standard deviation; 0 is perfect): warning, error.
MISMATCH_WARNING, MISMATCH_ERROR = 0.25, 1.0
#: Values per channel in one batch below which batch statistics are noisy: the standard error of μ_B is σ/√m,
#: 18% of σ at m = 32; at m ≤ 4 a batch's variance estimate is off by a factor of 2 or more half the time.
FEW_VALUES_WARNING, FEW_VALUES_ERROR = 32, 4
#: PyTorch weighs the *new* batch by momentum (default 0.1); Keras and Flax weigh the *old* value (0.99).
KERAS_MOMENTUM = 0.9


def _running64(module: NormLayer) -> tuple[Tensor, Tensor] | None:
    """The running statistics in float64, or None for a layer without them."""
    if not has_running_stats(module):
        return None
    mean, var = running_stats(module)
    return mean.detach().double(), var.detach().double()


def training_mode(model: nn.Module) -> list[Finding]:
    """The model, or a batch-norm layer in it, is in training mode: inference would use batch statistics.

    FrozenBatchNorm layers compute the same in both modes, so they do not count.
    """
    layers = batch_norm_layers(model)
    training = [name for name, m in layers if m.training]
    if not training and not (model.training and layers):
        return []
    return [Finding(
        "training_mode", "error", "",
        f"the model is in training mode ({len(training)} batch-norm layer(s) training): at inference each batch "
        f"would be normalized by its own statistics, so outputs depend on the rest of the batch, and every "
        f"forward would change the running statistics",
        {"model_training": int(model.training), "batch_norm_layers_training": len(training)},
        "call model.eval() before inference (and model.train() again before training)",
    )]


def statistics_health(obs: LayerObservation) -> list[Finding]:
    """Running statistics that are not finite, or that no training batch ever updated."""
    stats = _running64(obs.module)
    if stats is None:
        return []
    mean, var = stats
    bad_mean, bad_var = int((~torch.isfinite(mean)).sum()), int((~torch.isfinite(var)).sum())
    negative = int((var < 0).sum())
    if bad_mean or bad_var or negative:
        return [Finding(
            "stats_non_finite", "error", obs.name,
            "running statistics contain NaN, infinity or a negative variance: every output of this layer in eval "
            "mode is garbage",
            {"channels": mean.numel(), "nonfinite_mean": bad_mean, "nonfinite_var": bad_var,
             "negative_var": negative},
            "find the step where training diverged (a NaN loss, float16 overflow), then recompute the statistics "
            "with bnlab.tools.recalibrate (bnlab recalibrate)",
        )]
    count = obs.module.num_batches_tracked
    if count is None or int(count) != 0:
        return []
    initial = bool((mean == 0).all() and (var == 1).all())
    if initial:
        return [Finding(
            "stats_never_updated", "error", obs.name,
            "num_batches_tracked is 0 and the running statistics are still the initial E[x] = 0, Var[x] = 1: the "
            "layer never ran in training mode, so in eval mode it does not normalize at all",
            {"num_batches_tracked": 0, "running_mean_abs_max": 0.0, "running_var_min": 1.0},
            "recalibrate the statistics on training data (bnlab.tools.recalibrate / bnlab recalibrate), or check "
            "that the training loop calls model.train() and that the weights loaded include the buffers",
        )]
    return [Finding(
        "stats_never_updated", "info", obs.name,
        "num_batches_tracked is 0 although the running statistics are not the initial ones: probably a checkpoint "
        "written without the counter (PyTorch < 0.4.1) or statistics set by hand",
        {"num_batches_tracked": 0, "running_mean_abs_max": float(mean.abs().max()),
         "running_var_min": float(var.min())},
        "nothing to do if the statistics are right (see stats_mismatch); with momentum=None the counter matters",
    )]


def statistics_mismatch(obs: LayerObservation) -> list[Finding]:
    """Running statistics far from this data's: the train/eval gap, measured per layer.

    With E[x], Var[x] of the data and μ_r, σ²_r the running values, eval mode outputs x̂ = a·z + d per channel,
    where z is the correctly normalized input, a = √((Var[x] + ε)/(σ²_r + ε)) and d = (E[x] − μ_r)/√(σ²_r + ε).
    Its RMS error against z is √((a − 1)² + d²), in units of the output's standard deviation.
    """
    stats = _running64(obs.module)
    if stats is None or obs.inputs.batches == 0 or obs.inputs.values < 2:
        return []
    mean_r, var_r = stats
    if not (torch.isfinite(mean_r).all() and torch.isfinite(var_r).all()) or (var_r < 0).any():
        return []  # statistics_health reports these
    eps = float(obs.module.eps)
    mean_d, var_d = obs.inputs.result("pooled")
    scale = torch.sqrt((var_d + eps) / (var_r + eps))  # a
    shift = (mean_d - mean_r) / torch.sqrt(var_r + eps)  # d
    error = torch.sqrt((scale - 1).square() + shift.square())
    level = float(error.mean())
    if level < MISMATCH_WARNING:
        return []
    severity = "error" if level >= MISMATCH_ERROR else "warning"
    evidence: Evidence = {
        "output_error_mean": level, "output_error_median": float(error.median()),
        "output_error_max": float(error.max()),
        "mean_shift_median": float(shift.abs().median()), "std_ratio_median": float(scale.median()),
        "std_ratio_min": float(scale.min()), "std_ratio_max": float(scale.max()),
        "values_per_channel": obs.inputs.values,
    }
    return [Finding(
        "stats_mismatch", severity, obs.name,
        f"the running statistics do not describe this data: in eval mode the layer's output is off by "
        f"{level:.2f} standard deviations (RMS error, mean over {error.numel()} channels; median "
        f"{float(error.median()):.2f}), the gap that makes a model do well in training and badly in eval",
        evidence,
        "recompute the running statistics for the current weights with bnlab.tools.recalibrate (bnlab "
        "recalibrate) on training data; if this data differs from the training data (preprocessing, domain), "
        "fix the input pipeline or recalibrate on data like it",
    )]


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
    return [Finding(
        "few_values_per_channel", severity, obs.name,
        f"a typical batch gives this layer only {m} value(s) per channel: {noisy}, so training normalizes with "
        f"noisy statistics and the running averages are noisy too",
        evidence,
        "train with larger batches (if these batches are like the training batches), or use GroupNorm/LayerNorm, "
        "or keep the statistics fixed while fine-tuning (bnlab.tools.freeze or bnlab.convert(model, to='frozen'))",
    )]


def keras_momentum(name: str, module: NormLayer) -> list[Finding]:
    """A momentum ≥ 0.9: the Keras convention in a PyTorch model, so the running average follows the last batch."""
    momentum = module.momentum
    if momentum is None or momentum < KERAS_MOMENTUM:
        return []
    return [Finding(
        "keras_momentum", "warning", name,
        f"momentum={momentum} looks like the Keras/Flax convention: PyTorch weighs the new batch by momentum, so "
        f"the running statistics are {momentum:.0%} the last batch's and average over about {1 / momentum:.2f} "
        f"batches instead of {1 / max(1 - momentum, 1e-12):.0f}",
        {"momentum": float(momentum), "pytorch_equivalent": round(1 - momentum, 6)},
        f"use momentum={round(1 - momentum, 6)} (Keras' {momentum} in PyTorch's convention), and recalibrate the "
        f"statistics of the trained model with bnlab.tools.recalibrate",
    )]


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
    return [Finding(
        "bn_after_dropout", "warning", obs.name,
        f"batch norm downstream of dropout: the running variance is learned with dropout on, and used with it off"
        f"{shown}",
        evidence,
        "move dropout after the last batch norm (e.g. just before the classifier), or recalibrate the statistics "
        "with dropout off (bnlab.tools.recalibrate keeps dropout off)",
    )]


def reused(obs: LayerObservation) -> list[Finding]:
    """One batch-norm module called more than once per forward."""
    if obs.max_calls_per_forward <= 1:
        return []
    return [Finding(
        "bn_reused", "warning", obs.name,
        f"the module runs {obs.max_calls_per_forward} times per forward: its running statistics average the "
        f"distributions of all its uses, and in training each call counts as a batch",
        {"calls_per_forward": obs.max_calls_per_forward},
        "give each use its own batch-norm layer (weights may still be shared by the surrounding layers)",
    )]


def bias_before(obs: LayerObservation) -> list[Finding]:
    """A conv or linear bias right before batch norm: the normalization subtracts it again."""
    return [Finding(
        "bias_before_bn", "info", obs.name,
        f"layer {producer!r} has a bias and feeds this batch norm directly: subtracting the mean removes it, so "
        f"it only costs parameters and time (β plays its role)",
        {"layer_with_bias": producer, "bias_abs_mean": bias},
        f"build layer {producer!r} with bias=False",
    ) for producer, bias in obs.biased_producers.items()]
