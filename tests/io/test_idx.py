from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from gfsprune.errors import FileFormatError
from gfsprune.io.idx import read_idx


def idx_bytes(array: np.ndarray, *, code: int = 0x08) -> bytes:
    """An IDX file's bytes: zero magic, type code, dimension count, big-endian sizes, body."""
    sizes = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return bytes([0, 0, code, array.ndim]) + sizes + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, zipped: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if zipped else data)
    return path


@pytest.mark.parametrize("zipped", [False, True])
def test_reads_plain_and_gzipped_files(tmp_path, zipped) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", images, zipped=zipped)
    np.testing.assert_array_equal(read_idx(path, dims=3), images)


def _header(code=0x08, ndim=1, sizes=(2,)) -> bytes:
    return bytes([0, 0, code, ndim]) + b"".join(n.to_bytes(4, "big") for n in sizes)


@pytest.mark.parametrize(
    ("data", "dims", "message"),
    [
        (b"\0\0", 1, r"header is 2 bytes, shorter than the 4"),
        (b"\x01\0\x08\x01" + (2).to_bytes(4, "big") + b"ab", 1, r"magic number starts with 0100"),
        (_header(code=0x0D) + b"ab", 1, r"type code is 0x0d \(float\), not 0x08"),
        (_header() + b"ab", 3, r"dimension count is 1, not 3"),
        (_header(ndim=3, sizes=(2,)), 3, r"sizes end after 4 of 12 bytes"),
        (_header(sizes=(0,)), 1, r"item count is 0, outside 1\.\."),
        (_header(ndim=3, sizes=(1, 5000, 2)), 3, r"size of dimension 1 is 5000, outside"),
        (_header(sizes=(3,)) + b"ab", 1, r"body has 2 bytes where the sizes \[3\] need 3"),
        (_header(sizes=(2,)) + b"abc", 1, r"body goes on past the 2 bytes"),
    ],
)
def test_every_header_field_is_checked(tmp_path, data, dims, message) -> None:
    path = tmp_path / "bad-idx-ubyte"
    path.write_bytes(data)
    with pytest.raises(FileFormatError, match=rf"^IDX file '{path}': {message}") as caught:
        read_idx(path, dims=dims)
    assert "\n" not in str(caught.value)


def test_a_truncated_gzip_file_and_a_missing_file_are_one_line_errors(tmp_path) -> None:
    path = tmp_path / "t-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100)))[:30])
    with pytest.raises(FileFormatError, match=r"cannot be read \(EOFError"):
        read_idx(path, dims=1)
    with pytest.raises(FileFormatError, match=r"does not exist"):
        read_idx(tmp_path / "none", dims=1)
