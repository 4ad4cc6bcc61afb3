"""The error type of the command line: a problem with the user's request, printed as one line with exit code 2."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A problem with the user's request: printed as ``bnlab: error: ...`` on one line, exit code 2."""
