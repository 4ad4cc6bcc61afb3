"""A strict reader for the IDX files MNIST and Fashion-MNIST ship in (optionally gzipped).

The format: two zero bytes, a type code (0x08: unsigned byte), the number of dimensions ``d``, then ``d``
big-endian uint32 sizes, then the values in row-major order. The reader checks every one of these and the exact
length, so a truncated or corrupt file is a :class:`ValueError` naming the file, never a silently short data set.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx"]

_UNSIGNED_BYTE = 0x08


def read_idx(path: str | os.PathLike[str], *, ndim: int) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` is decompressed), of ``ndim`` dimensions, dtype uint8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a valid IDX file of unsigned bytes with ``ndim`` dimensions, or it is
            shorter or longer than its header says (truncated download, wrong file).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated or empty")
    zero0, zero1, type_code, dims = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex()} (must start with 0000); not an IDX file")
    if type_code != _UNSIGNED_BYTE:
        raise ValueError(f"{path}: IDX type code 0x{type_code:02x}, expected 0x08 (unsigned byte)")
    if dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path}: file ends inside the IDX header ({len(raw)} of {header} bytes); it is truncated")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(f"{path}: header says shape {shape} = {expected} values but the file holds {got}: "
                         f"it is {what}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({err}); the download is corrupt or truncated") from None
