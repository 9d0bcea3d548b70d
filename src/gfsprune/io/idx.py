"""Reading IDX files, the format MNIST and Fashion-MNIST ship in (``*-idx3-ubyte[.gz]``).

An IDX file is a 4-byte header -- two zero bytes, a type code, the number of dimensions --
then one big-endian 32-bit size per dimension, then the values in C order. :func:`read_idx`
reads unsigned-byte files, plain or gzipped, without pickle, and checks every header field
before it reads the values: the magic zeros, the type code, the dimensions against the ones
expected, each size against a bound, and the size of the body against the bytes that follow
(a gzipped file is decompressed only as far as the header says, so a bomb costs nothing).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from gfsprune.errors import FileFormatError

__all__ = ["MAX_BYTES", "MAX_ITEMS", "MAX_SIDE", "read_idx"]

#: Bounds on the sizes of a header: no data set in this format comes near them.
MAX_ITEMS = 1 << 24
MAX_SIDE = 4096
MAX_BYTES = 1 << 32
_UBYTE = 0x08
_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int"}
_TYPES |= {0x0D: "float", 0x0E: "double"}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike, *, dims: int) -> np.ndarray:
    """The unsigned-byte array of shape ``(N, ...)`` with ``dims`` dimensions in an IDX file.

    Args:
        path: The file, gzipped or not (told by its first bytes, not its name).
        dims: The dimensions it must have: 1 for labels, 3 for images (N, rows, columns).

    Raises:
        FileFormatError: one line naming the file and the field that is wrong.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
        >>> read_idx(path, dims=1).tolist()
        [7, 9]
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            zipped = raw.read(2) == _GZIP_MAGIC
        with gzip.open(path, "rb") if zipped else path.open("rb") as file:
            return _read(file, path, dims)
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise FileFormatError(f"IDX file '{path}' does not exist; check the path.") from err
        raise FileFormatError(
            f"IDX file '{path}' cannot be read ({type(err).__name__}: {err}); replace it with "
            "the original."
        ) from err


def _read(file: IO[bytes], path: Path, dims: int) -> np.ndarray:
    def bad(field: str, problem: str) -> FileFormatError:
        return FileFormatError(
            f"IDX file '{path}': {field} {problem}; replace it with the original file."
        )

    header = file.read(4)
    if len(header) < 4:
        raise bad("header", f"is {len(header)} bytes, shorter than the 4 of the magic number")
    if header[:2] != b"\0\0":
        raise bad("magic number", f"starts with {header[:2].hex()}, not 0000")
    code, ndim = header[2], header[3]
    if code != _UBYTE:
        kind = _TYPES.get(code, "unknown")
        raise bad("type code", f"is 0x{code:02x} ({kind}), not 0x08 (unsigned byte)")
    if ndim != dims:
        raise bad("dimension count", f"is {ndim}, not {dims}")
    raw_sizes = file.read(4 * ndim)
    if len(raw_sizes) < 4 * ndim:
        raise bad("sizes", f"end after {len(raw_sizes)} of {4 * ndim} bytes")
    sizes = [int.from_bytes(raw_sizes[i : i + 4], "big") for i in range(0, 4 * ndim, 4)]
    if not 0 < sizes[0] <= MAX_ITEMS:
        raise bad("item count", f"is {sizes[0]}, outside 1..{MAX_ITEMS}")
    for axis, size in enumerate(sizes[1:], start=1):
        if not 0 < size <= MAX_SIDE:
            raise bad(f"size of dimension {axis}", f"is {size}, outside 1..{MAX_SIDE}")
    count = int(np.prod(sizes))
    if count > MAX_BYTES:
        raise bad("sizes", f"{sizes} make {count} values, more than {MAX_BYTES}")
    body = _read_up_to(file, count)
    if len(body) < count:
        raise bad("body", f"has {len(body)} bytes where the sizes {sizes} need {count}")
    if file.read(1):
        raise bad("body", f"goes on past the {count} bytes the sizes {sizes} need")
    return np.frombuffer(body, dtype=np.uint8).reshape(sizes)


def _read_up_to(file: IO[bytes], count: int) -> bytes:
    """At most ``count`` bytes, read in chunks so that a short file allocates little."""
    chunks, left = [], count
    while left and (chunk := file.read(min(left, _CHUNK))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
