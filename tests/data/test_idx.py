"""The IDX reader: valid files of every flavour, and each way a file can be corrupt or truncated."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnlab.data import read_idx


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08, magic: bytes = b"\x00\x00") -> bytes:
    header = magic + bytes([type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


@pytest.mark.parametrize("name", [pytest.param("x.gz", id="gzipped"), pytest.param("x", id="plain")])
def test_reads_images_exactly(tmp_path: Path, name: str) -> None:
    out = read_idx(write(tmp_path / name, idx_bytes(IMAGES)), ndim=3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, IMAGES)


def test_reads_labels(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "y.gz", idx_bytes(labels)), ndim=1), labels)


GOOD = idx_bytes(IMAGES)
CORRUPT = [
    pytest.param(GOOD[:-1], "truncated", id="one-byte-short"),
    pytest.param(GOOD[:10], "ends inside the IDX header", id="cut-in-header"),
    pytest.param(GOOD[:2], "too short", id="two-bytes"),
    pytest.param(b"", "too short", id="empty"),
    pytest.param(GOOD + b"\x00", "longer than its header says", id="trailing-byte"),
    pytest.param(idx_bytes(IMAGES, magic=b"\x08\x03"), "bad IDX magic", id="bad-magic"),
    pytest.param(idx_bytes(IMAGES, type_code=0x0D), "type code 0x0d", id="float-type-code"),
    pytest.param(idx_bytes(IMAGES[0]), "2 dimensions, expected 3", id="wrong-rank"),
]


@pytest.mark.parametrize(("data", "message"), CORRUPT)
def test_corrupt_file_is_a_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "x.gz", data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [pytest.param(0.5, id="half-gzip"), pytest.param(0.95, id="gzip-missing-trailer")])
def test_truncated_gzip_is_a_clear_error(tmp_path: Path, cut: float) -> None:
    packed = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8) + 7))
    path = tmp_path / "x.gz"
    path.write_bytes(packed[: int(len(packed) * cut)])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_idx(path, ndim=3)


def test_not_gzip_with_gz_name(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(IMAGES))
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(path, ndim=3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope.gz", ndim=1)


def test_a_gzip_bomb_is_refused_after_its_header_in_bounded_memory(tmp_path: Path) -> None:
    """A header announcing 10 images followed by 256 MiB of zeros, gzipped to a few hundred KiB: the reader stops
    after the announced 7,840 values plus one byte, instead of inflating everything first."""
    header = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    zeros = bytes(1 << 20)
    parts = [packer.compress(header)] + [packer.compress(zeros) for _ in range(256)] + [packer.flush()]
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="longer than its header says"):
            read_idx(path, ndim=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading a 10-image header allocated {peak / 2**20:.0f} MiB"


def test_a_huge_announced_size_is_reported_exactly(tmp_path: Path) -> None:
    """Three dimensions of 2^32 − 1: the count in the message is the true product, not an int64 overflow."""
    side = 2**32 - 1
    path = tmp_path / "huge"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", side, side, side) + bytes(100))
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path, ndim=3)
    assert f"= {side**3} values but the file holds 100" in str(info.value)
