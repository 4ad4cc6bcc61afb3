"""A strict reader for the IDX files MNIST and Fashion-MNIST ship in (optionally gzipped).

The format: two zero bytes, a type code (0x08: unsigned byte), the number of dimensions ``d``, then ``d``
big-endian uint32 sizes, then the values in row-major order. The reader checks every one of these and the exact
length, so a truncated or corrupt file is a :class:`ValueError` naming the file, never a silently short data set.

The file is read as a stream, header first: only as many bytes as the header announces are read (plus one, to
tell a longer file), so a small gzip file that inflates to gigabytes costs the memory of what its header says,
never what it would inflate to.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["read_idx"]

_UNSIGNED_BYTE = 0x08
_CHUNK = 1 << 20  # bytes read at a time: memory grows with the data actually there, not with what a header claims


def read_idx(path: str | os.PathLike[str], *, ndim: int) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` is decompressed), of ``ndim`` dimensions, dtype uint8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a valid IDX file of unsigned bytes with ``ndim`` dimensions, or it is
            shorter or longer than its header says (truncated download, wrong file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
            shape = _read_header(stream, path, ndim)
            values = _read_values(stream, path, shape)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        if path.suffix != ".gz":
            raise
        raise ValueError(f"{path}: not a readable gzip file ({err}); the download is corrupt or truncated") from None
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_header(stream: _Stream, path: Path, ndim: int) -> tuple[int, ...]:
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: {len(magic)} bytes is too short for an IDX header; the file is truncated or "
                         f"empty")
    zero0, zero1, type_code, dims = magic
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{path}: bad IDX magic number {magic.hex()} (must start with 0000); not an IDX file")
    if type_code != _UNSIGNED_BYTE:
        raise ValueError(f"{path}: IDX type code 0x{type_code:02x}, expected 0x08 (unsigned byte)")
    if dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    sizes = stream.read(4 * dims)
    if len(sizes) < 4 * dims:
        raise ValueError(f"{path}: file ends inside the IDX header ({4 + len(sizes)} of {4 + 4 * dims} bytes); it is "
                         f"truncated")
    return struct.unpack(f">{dims}I", sizes)


def _read_values(stream: _Stream, path: Path, shape: tuple[int, ...]) -> bytearray:
    """Exactly the ``prod(shape)`` bytes after the header; one byte more, or fewer, is an error."""
    expected = math.prod(shape)  # a Python int: sizes up to 2^32 − 1 each cannot overflow it
    values = bytearray()
    while len(values) < expected:
        chunk = stream.read(min(_CHUNK, expected - len(values)))
        if not chunk:
            raise ValueError(f"{path}: header says shape {shape} = {expected} values but the file holds "
                             f"{len(values)}: it is truncated")
        values += chunk
    if stream.read(1):
        raise ValueError(f"{path}: header says shape {shape} = {expected} values but the file holds more: it is "
                         f"longer than its header says")
    return values
