"""How the ranks of a ``bnlab ... --nproc N`` run tell the command that started them why they failed, so that the
command ends with one message instead of torch.distributed.run's report (read without importing torch).

The starting command sets :data:`FAILURES_ENV` to a fresh folder. A rank that fails writes there, before it exits,
``rank-R.user`` (a user error: its one-line message) or ``rank-R.bug`` (an unexpected exception: its traceback).
torch.distributed.run then ends the other ranks, and the starting command reports :func:`first_failure`: a user
error before a bug, then the earliest written. A rank whose collective failed because a peer went away
(:func:`lost_connection`) writes nothing: it failed because of that peer, not first. When no rank wrote anything
(a rank killed by a signal), the starting command shows the launcher's own output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FAILURES_ENV", "NPROC_ENV", "RankFailure", "first_failure", "in_nproc_run", "lost_connection",
           "record_failure"]

#: Set in every process of a ``--nproc`` run: the number of processes the user asked for.
NPROC_ENV = "BNLAB_NPROC"
#: Set in every process of a ``--nproc`` run: the folder where a failing rank writes why.
FAILURES_ENV = "BNLAB_NPROC_FAILURES"

_USER, _BUG = "user", "bug"


@dataclass(frozen=True)
class RankFailure:
    """Why rank ``rank`` failed: a user error's message (one line), or an unexpected exception's traceback."""

    rank: int
    user_error: bool
    text: str


def in_nproc_run() -> bool:
    """True in a process started by ``--nproc`` (a rank), False in the command a user typed."""
    return NPROC_ENV in os.environ


def lost_connection(error: BaseException) -> bool:
    """True for an error of torch.distributed's communication: a collective that failed (gloo's or NCCL's words)
    or timed out (bnlab's SyncBatchNorm quotes the backend's error), which in a ``--nproc`` run follows another
    rank's failure."""
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    if isinstance(dist_error, type) and isinstance(error, dist_error):
        return True
    words = str(error).lower()
    return isinstance(error, RuntimeError) and ("gloo" in words or "nccl" in words)


def record_failure(text: str, *, user_error: bool) -> None:
    """Write this rank's failure for the starting command; does nothing outside a ``--nproc`` rank."""
    folder, rank = os.environ.get(FAILURES_ENV), os.environ.get("RANK")
    if not folder or rank is None:
        return
    # When it cannot be written, the starting command falls back on the launcher's own output.
    with contextlib.suppress(OSError, ValueError):
        Path(folder, f"rank-{int(rank)}.{_USER if user_error else _BUG}").write_text(text, encoding="utf-8")


def first_failure(folder: Path) -> RankFailure | None:
    """The failure to report from ``folder`` (None when no rank wrote one: killed by a signal, or failed before
    bnlab's command ran)."""
    found: list[tuple[bool, int, int, Path]] = []
    for path in Path(folder).glob("rank-*.*"):
        rank, _, kind = path.name.removeprefix("rank-").partition(".")
        if rank.isdigit() and kind in (_USER, _BUG):
            found.append((kind == _BUG, path.stat().st_mtime_ns, int(rank), path))
    if not found:
        return None
    bug, _, first_rank, path = min(found)
    return RankFailure(first_rank, not bug, path.read_text(encoding="utf-8", errors="replace"))
