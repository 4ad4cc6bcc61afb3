"""``bnlab fold``, ``bnlab recalibrate`` and ``bnlab doctor``: the model tools' options on the command line
(what they do is in :mod:`bnlab.cli.tool_commands`).

Each takes the model as ``--model module:factory`` (a callable that builds it; the current directory is
importable) and ``--weights FILE`` (a state_dict in .pt/.pth or .safetensors, loaded without unpickling code),
and data as ``--data NAME`` (a dataset of :mod:`bnlab.data`) or ``--data FILE.npz`` (an array ``x`` of inputs,
optionally ``y`` of labels). ``fold`` and ``recalibrate`` write weights to ``--out FILE`` through a temporary
file, so a failure leaves nothing behind. Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# The commands' code (torch, numpy, the tools) is imported when a command runs: `bnlab --help` stays fast.


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from bnlab.cli import tool_commands

        command: Callable[[argparse.Namespace], int] = getattr(tool_commands, name)
        return command(args)

    return run


def register(subparsers: Any) -> None:
    fold = subparsers.add_parser("fold", help="fold batch norm into conv/linear weights for inference",
                                 description="Fold every batch norm next to a conv or linear layer into its weights "
                                             "and write the folded model's weights. Load them into "
                                             "bnlab.tools.fold(factory().eval()).")
    _common(fold, data_required=False, split="test", batch_size=64)
    fold.add_argument("--out", required=True, help="where to write the folded weights (.pt or .safetensors)")
    fold.add_argument("--method", choices=("auto", "fx", "modules", "export", "sequential"), default="auto",
                      help="how to find conv/BN pairs (default: torch.fx on the whole model; where it cannot trace "
                           "it, torch.export on the first batch of --data, else torch.fx module by module)")
    fold.add_argument("--report", action="store_true",
                      help="print a table with one row per batch norm: folded into which layer, or why it stays")
    fold.set_defaults(func=_command("fold_command"))

    recal = subparsers.add_parser("recalibrate", help="recompute BN running statistics from data (Algorithm 2)",
                                  description="Recompute every batch norm's running statistics for the current "
                                              "weights from the data and write the model's weights.")
    _common(recal, data_required=True, split="train", batch_size=64)
    recal.add_argument("--out", required=True, help="where to write the weights (.pt or .safetensors)")
    recal.add_argument("--mode", choices=("pooled", "paper", "cumulative"), default="pooled",
                       help="how batches are averaged (default pooled; see bnlab.tools.recalibrate)")
    recal.set_defaults(func=_command("recalibrate_command"))

    doc = subparsers.add_parser("doctor", help="report what is wrong with a model's batch norm, with evidence",
                                description="Examine every batch norm on the data: findings with severity, layer, "
                                            "evidence and fix, and (with labels) loss and accuracy in train mode, "
                                            "eval mode and eval after recalibration.")
    _common(doc, data_required=True, split="test", batch_size=64)
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--html", metavar="OUT.html",
                     help="also write the report as a self-contained HTML page with charts of the train/eval gap "
                          "per layer and of the measured effect")
    doc.set_defaults(func=_command("doctor_command"))


def _common(parser: argparse.ArgumentParser, *, data_required: bool, split: str, batch_size: int) -> None:
    parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="a callable that builds the model, e.g. mypkg.models:resnet18")
    parser.add_argument("--weights", metavar="FILE", help="state_dict to load (.pt, .pth or .safetensors)")
    parser.add_argument("--data", required=data_required, metavar="NAME|FILE.npz",
                        help="a dataset name (bnlab.data) or an .npz with inputs 'x' and optional labels 'y'")
    parser.add_argument("--split", choices=("train", "test"), default=split,
                        help=f"which split of a named dataset (default {split})")
    parser.add_argument("--data-dir", help="where named datasets live (see bnlab.data)")
    parser.add_argument("--batch-size", type=_positive, default=batch_size,
                        help=f"samples per batch (default {batch_size}; use the training batch size)")
    parser.add_argument("--num-batches", type=_positive, help="use at most this many batches (default all)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


