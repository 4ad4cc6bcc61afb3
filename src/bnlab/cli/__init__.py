"""The ``bnlab`` command line: one entry point over the lab's and the model tools' subcommands.

Each subcommand module (:mod:`bnlab.cli.lab`, :mod:`bnlab.cli.tools`) defines ``register(subparsers)``, which adds
its subcommands and sets ``func`` on each parser to a callable taking the parsed arguments and returning an exit
code. The command line sits on top of the library: nothing below ``bnlab.cli`` imports it.

Errors a user can fix (a bad option value, a missing file, unusable data) are raised as :class:`CLIError` and
printed as one line, ``bnlab: error: ...``, with exit code 2; argparse's own usage errors exit 2 as well.

Ctrl-C prints ``bnlab: interrupted`` and exits 130 at any moment of :func:`main`, imports included: this module
and the package root import nothing heavy (torch, numpy), so the console script reaches :func:`main` within
milliseconds of Python's start, and everything else is imported inside it.
"""

from __future__ import annotations

import os
import sys

from bnlab.cli.errors import CLIError

# Only os and sys at the top: typing, signal (which imports enum) and the rest wait until main() runs.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["CLIError", "build_parser", "main"]

INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from bnlab import __version__
    from bnlab.cli import lab, tools

    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="Batch Normalization (Ioffe & Szegedy, 2015) for PyTorch: experiments and model tools.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (lab, tools):  # in the order their commands are listed by --help: list, run, report; fold, ...
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    A user error is one line on stderr and exit code 2; Ctrl-C is ``bnlab: interrupted`` and exit code 130. The
    interrupt is told by the signal, not by the exception it raised: a library may turn that KeyboardInterrupt
    into another error (numpy makes an ImportError of one that interrupts the import of its C extension).
    """
    watch = _InterruptWatch()
    try:
        code, error = INTERRUPTED, None
        try:
            watch.start()
            code = _run(argv)
        except CLIError as err:
            code, error = 2, f"bnlab: error: {err}"
            _record_rank_failure(str(err), user_error=True)
        except BrokenPipeError:
            # The reader went away (``bnlab doctor | head``): not an error of ours; silence the final flush too.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            code = 0
        except BaseException as err:
            if not (watch.seen or isinstance(err, KeyboardInterrupt)):
                if not isinstance(err, SystemExit):
                    _record_rank_bug(err)
                raise  # SystemExit from argparse (--help, usage errors), or a bug: as it is
            watch.seen = True
        watch.quiet = True  # from here a Ctrl-C is only noted: what is left is saying how it ended
        if watch.seen:
            print("bnlab: interrupted", file=sys.stderr)
            return INTERRUPTED
        if error is not None:
            print(error, file=sys.stderr)
        return code
    finally:
        watch.stop()


def _record_rank_failure(text: str, *, user_error: bool) -> None:
    """In a rank of a ``--nproc`` run, tell the starting command why this rank failed (it says so once)."""
    if "BNLAB_NPROC" in os.environ:  # bnlab.lab.rank_failures.NPROC_ENV, checked before importing anything
        from bnlab.lab.rank_failures import record_failure

        record_failure(text, user_error=user_error)


def _record_rank_bug(err: BaseException) -> None:
    """An unexpected exception in a rank: its traceback, unless it is a lost connection to a peer that failed."""
    if "BNLAB_NPROC" in os.environ:
        import traceback

        from bnlab.lab.rank_failures import lost_connection

        if not lost_connection(err):
            _record_rank_failure(traceback.format_exc(), user_error=False)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a command that starts itself again (--nproc)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


class _InterruptWatch:
    """SIGINT while :func:`main` runs: noted in ``seen``; the first is raised as KeyboardInterrupt unless ``quiet``.

    The previous handler comes back at :meth:`stop`, so calling main() in a program changes nothing for it.
    Outside the main thread, where signal handlers cannot be set, it notes nothing (the exception still counts).
    """

    def __init__(self) -> None:
        self.seen = False
        self.quiet = False
        self._previous: object = None
        self._active = False

    def start(self) -> None:
        import signal  # here, not at the top: it imports enum, time the first moments of the command do not have

        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            return
        self._active = True

    def _handle(self, signum: int, frame: object) -> None:
        first = not self.seen
        self.seen = True
        if first and not self.quiet:  # a second Ctrl-C must not interrupt the handling of the first
            raise KeyboardInterrupt

    def stop(self) -> None:
        if self._active:
            import signal

            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._active = False
