"""Every kind of finding the doctor reports: its severities, a title, the number that matters, and the fix.

A report groups its findings by kind (one entry per kind, with a table of the layers it concerns and the fix said
once); this table is what the text, the JSON and the HTML page are written from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of problem. ``measure`` names the evidence entry that matters most (shown as ``label`` in the
    table); ``higher_is_worse`` orders its rows, worst first."""

    severity: str  # "error", "warning", "info", or two of them ("warning or error")
    title: str
    measure: str
    label: str
    fix: str
    higher_is_worse: bool = True


RECALIBRATE = "bnlab.tools.recalibrate (bnlab recalibrate) on training data"

KINDS: dict[str, Kind] = {
    "data_non_finite": Kind(
        "error", "the data holds NaN or infinite values", "non_finite_values", "non-finite values",
        "clean the input pipeline (a division by zero, a log of 0, a corrupt file); the doctor left those batches "
        "out of every statistic"),
    "activations_non_finite": Kind(
        "error", "the model turns finite data into NaN or infinity", "batches", "batches",
        "find the layer that overflows (float16 without loss scaling, an exploding weight, a division by zero); "
        "the doctor left those batches out of the statistics of the layers they reached"),
    "training_mode": Kind(
        "error", "the model is in training mode", "batch_norm_layers_training", "layers training",
        "call model.eval() before inference (and model.train() again before training)"),
    "stats_non_finite": Kind(
        "error", "running statistics are NaN, infinite or negative", "channels_bad", "bad channels",
        f"find the step where training diverged (a NaN loss, float16 overflow), then recompute the statistics with "
        f"{RECALIBRATE}; to keep one bad batch from poisoning them again, build the bnlab layers with "
        f"non_finite='skip_update' (the update of such a batch is skipped and counted) or non_finite='error'"),
    "stats_never_updated": Kind(
        "error or info", "running statistics were never updated", "num_batches_tracked", "batches tracked",
        f"recalibrate the statistics ({RECALIBRATE}), or check that the training loop calls model.train() and that "
        f"the weights loaded include the buffers; nothing to do if the statistics were set on purpose"),
    "stats_not_converged": Kind(
        "warning or error", "running statistics have not converged", "initial_weight", "initial value left",
        f"train for more steps, or use momentum=None (a cumulative average: exact once every batch is seen), or "
        f"recompute the statistics for the current weights with {RECALIBRATE}"),
    "stats_mismatch": Kind(
        "warning or error", "running statistics do not describe this data", "output_error_mean",
        "eval error (σ)",
        f"recompute the running statistics for the current weights with {RECALIBRATE}; if this data differs from "
        f"the training data (preprocessing, domain), fix the input pipeline or recalibrate on data like it"),
    "few_values_per_channel": Kind(
        "warning or error", "too few values per channel for batch statistics", "values_per_channel",
        "values/channel",
        "train with larger batches (if these batches are like the training batches); or batch renorm, which "
        "corrects each batch towards the running statistics (bnlab.convert(model, to='renorm'), with "
        "bnlab.nn.renorm_schedule's warm-up); or GroupNorm/LayerNorm; or keep the statistics fixed while "
        "fine-tuning (bnlab.tools.freeze or bnlab.convert(model, to='frozen')); a batch of one value per channel "
        "in training is normalized with the running statistics by small_batch='running' on bnlab layers",
        higher_is_worse=False),
    "foreign_convention": Kind(
        "warning", "another framework's batch-norm convention left on the layer", "signs", "signs",
        "translate the setting to PyTorch's convention (bnlab.compat converts Keras and Flax layers; "
        "docs/compat.md has the table), or train with convention='keras' / 'flax' on bnlab layers"),
    "convention_set": Kind(
        "info", "the layer follows another framework's batch-norm rules (convention=)", "convention",
        "convention",
        "intended for a model ported from Keras, Flax or darknet (docs/compat.md); set convention='torch' to train "
        "by PyTorch's rules. bnlab.fold and bnlab.freeze handle it; bnlab.convert(to='torch'/'sync') refuses it, "
        "and torch's fusers and to='frozen' refuse a darknet layer (its ε sits outside the root)"),
    "keras_momentum": Kind(
        "warning", "momentum in the Keras convention", "momentum", "momentum",
        "use momentum = 1 − (the Keras value), e.g. 0.01 for Keras' 0.99, and recalibrate the statistics of the "
        "trained model with bnlab.tools.recalibrate"),
    "bn_after_dropout": Kind(
        "warning", "batch norm downstream of dropout (variance shift)", "input_variance_ratio_train_vs_eval",
        "variance on/off",
        "move dropout after the last batch norm (e.g. just before the classifier), or recalibrate the statistics "
        "with dropout off (bnlab.tools.recalibrate keeps dropout off)"),
    "bn_reused": Kind(
        "warning", "one batch-norm module called several times per forward", "calls_per_forward", "calls",
        "give each use its own batch-norm layer (weights may still be shared by the surrounding layers)"),
    "bias_before_bn": Kind(
        "info", "a conv/linear bias right before batch norm is wasted", "bias_abs_mean", "mean |bias|",
        "build those layers with bias=False (β plays their bias' role)"),
}

#: Every finding the doctor can report, with its severity (or severities).
CODES = {code: kind.severity for code, kind in KINDS.items()}
