"""The ``bnlab`` command line: one entry point over the lab's and the model tools' subcommands.

Each subcommand module (:mod:`bnlab.cli.lab`, :mod:`bnlab.cli.tools`) defines ``register(subparsers)``, which adds
its subcommands and sets ``func`` on each parser to a callable taking the parsed arguments and returning an exit
code. The command line sits on top of the library: nothing below ``bnlab.cli`` imports it.

Errors a user can fix (a bad option value, a missing file, unusable data) are raised as :class:`CLIError` and
printed as one line, ``bnlab: error: ...``, with exit code 2; argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bnlab.cli import lab, tools
from bnlab.cli.errors import CLIError

__all__ = ["CLIError", "build_parser", "main"]

# Subcommand modules, in the order their commands are listed by --help.
COMMAND_MODULES = (lab, tools)  # list, run, report; fold, recalibrate, doctor


def build_parser() -> argparse.ArgumentParser:
    from bnlab import __version__

    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="Batch Normalization (Ioffe & Szegedy, 2015) for PyTorch: experiments and model tools.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"bnlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``bnlab doctor | head``): not an error of ours; silence the final flush too.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
