"""What SyncBatchNorm sends between processes: one all-gather per pass, with a header that catches disagreement.

Every rank of the process group sends one row, ``[header | payload]``, in the accumulation dtype (float32, or
float64 for float64 input), and receives every rank's row in rank order (an all-gather: merging in rank order makes
every rank compute bit-identical statistics, which an all-reduce's order does not promise). The header is

    (layer key, call number, phase, channels)

and every rank checks that all rows carry the same header before using a payload: a rank that skipped a
batch-norm call, or runs a different layer, or has another channel count, is named in the error instead of its
numbers being merged silently. The numbers are small integers (below 2**20), exact in float32.

Bounded time: the collective is started asynchronously and waited for with a timeout. A rank that never joins (it
is in eval mode while the others train, it skipped the layer, it failed) makes the others raise
:class:`SyncBatchNormError` after ``timeout`` seconds instead of blocking forever.

Payload sizes must agree before a collective can even deliver a header (gloo aborts the process on a size
mismatch), so each layer's first exchange in a process group is a handshake of the header alone: ranks that would
run different layers, or the same layer with different channel counts, fail there with a named error.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BACKWARD", "FORWARD", "HANDSHAKE", "SyncBatchNormError", "active_group", "all_gather_rows"]

#: The phases a header names.
HANDSHAKE, FORWARD, BACKWARD = 1, 2, 3
_PHASE_NAMES = {HANDSHAKE: "handshake", FORWARD: "forward", BACKWARD: "backward"}
#: Header numbers wrap below this, where float32 still holds every integer exactly.
HEADER_MODULUS = 1 << 20
HEADER_SIZE = 4


class SyncBatchNormError(RuntimeError):
    """Processes disagree about a synchronized batch-norm call, or one did not join it in time."""


def active_group(process_group: Any) -> Any | None:
    """The process group to synchronize over, or None when the layer is plain batch norm here.

    None when ``torch.distributed`` is unavailable or not initialised, when this rank is outside
    ``process_group`` (it never calls the group's collectives), or when the group has one process.
    """
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = dist.group.WORLD if process_group is None else process_group
    if dist.get_rank(group) < 0 or dist.get_world_size(group) == 1:
        return None
    return group


def all_gather_rows(group: Any, payload: Tensor, *, layer: str, key: int, call: int, phase: int, channels: int,
                    timeout: float) -> Tensor:
    """Every rank's payload, as a (world size, len(payload)) tensor in rank order, after checking the headers.

    Raises :class:`SyncBatchNormError` naming ``layer`` when the headers disagree or the collective does not
    complete within ``timeout`` seconds.
    """
    header = torch.tensor([key % HEADER_MODULUS, call % HEADER_MODULUS, phase, channels], dtype=payload.dtype,
                          device=payload.device)
    row = torch.cat([header, payload])
    world = dist.get_world_size(group)
    rows = row.new_empty(world * row.numel())
    try:
        work = dist.all_gather_single(rows, row, group=group, async_op=True)
        assert work is not None  # async_op=True returns the work handle
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as error:
        raise SyncBatchNormError(
            f"{layer}: the {_PHASE_NAMES[phase]} exchange of synchronized batch norm (call {call}) did not complete "
            f"within {timeout:g} s: another rank of the process group did not reach this call. A rank may have "
            f"skipped this batch-norm call, be in eval mode while the others train, run a different model, or have "
            f"failed (see its own error). The process group cannot be used after this; set the layer's "
            f"timeout to wait longer. ({error})"
        ) from None
    rows = rows.view(world, row.numel())
    _check_headers(rows[:, :HEADER_SIZE], layer, dist.get_rank(group))
    return rows[:, HEADER_SIZE:]


def handshake(group: Any, dtype: torch.dtype, device: torch.device, *, layer: str, key: int, channels: int,
              timeout: float) -> None:
    """A layer's first exchange in ``group``: the header alone, so that every later payload has one size."""
    all_gather_rows(group, torch.empty(0, dtype=dtype, device=device), layer=layer, key=key, call=0,
                    phase=HANDSHAKE, channels=channels, timeout=timeout)


def _check_headers(headers: Tensor, layer: str, rank: int) -> None:
    if bool((headers == headers[rank]).all()):
        return
    rows = [[int(v) for v in h] for h in headers.tolist()]
    described = "; ".join(f"rank {r}: layer key {k}, call {c}, {_PHASE_NAMES.get(p, p)}, {n} channels"
                          for r, (k, c, p, n) in enumerate(rows))
    what = []
    if len({n for _, _, _, n in rows}) > 1:
        what.append("the channel counts differ")
    if len({k for k, _, _, _ in rows}) > 1:
        what.append("the ranks are at different layers (a rank skipped a batch-norm call, or the models differ)")
    elif len({c for _, c, _, _ in rows}) > 1:
        what.append("the ranks have called this layer a different number of times (a rank skipped a call)")
    if len({p for _, _, p, _ in rows}) > 1:
        what.append("the ranks are in different phases (forward against backward)")
    raise SyncBatchNormError(
        f"{layer}: the ranks of the process group disagree about this synchronized batch-norm call: "
        f"{' and '.join(what) or 'their headers differ'} ({described}). Every rank must run the same layers, in "
        f"the same order and mode, on inputs with the same channel count."
    )
