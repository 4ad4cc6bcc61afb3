"""The ``bnlab`` command line: one entry point, subcommands contributed by the parts of the library.

Each module named in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its subcommands and sets
``func`` on each parser to a callable taking the parsed arguments and returning an exit code.

Errors a user can fix (a bad option value, a missing file, unusable data) are raised as :class:`CLIError` and
printed as one line, ``bnlab: error: ...``, with exit code 2; argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in the order their commands are listed by --help.
COMMAND_MODULES: tuple[str, ...] = (
    "bnlab.tools.cli",  # fold, recalibrate, doctor
)


class CLIError(Exception):
    """A problem with the user's request: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from bnlab import __version__

    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="Batch Normalization (Ioffe & Szegedy, 2015) for PyTorch: experiments and model tools.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
