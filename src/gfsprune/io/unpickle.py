"""Reading pickles that hold only data: builtin containers, numbers, text and numpy arrays.

``pickle.load`` calls whatever function a file names, so a crafted file runs code. The
CIFAR-10 python batches are pickles; :func:`load_data_pickle` reads them with an unpickler
that resolves only the names a pickled numpy array needs and refuses any other by name.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import IO, Any

import numpy as np

from gfsprune.errors import FileFormatError

__all__ = ["load_data_pickle"]

# What pickled numpy arrays name: ``_reconstruct``, ``ndarray`` and ``dtype`` (protocols
# 2-4), ``_frombuffer`` (protocol 5) and ``scalar`` (numpy scalars); numpy 1 wrote them under
# ``numpy.core``, numpy 2 under ``numpy._core``. Each only builds arrays from bytes. Python 3
# writes bytes at protocol 2 as ``_codecs.encode(text, "latin1")``, which only converts data.
_array = np.zeros(1)
_FUNCTIONS = {
    ("multiarray", "_reconstruct"): _array.__reduce_ex__(2)[0],
    ("numeric", "_frombuffer"): _array.__reduce_ex__(5)[0],
    ("multiarray", "scalar"): np.float64(0).__reduce__()[0],
}
_ALLOWED = {
    **{
        (f"numpy.{core}.{module}", name): fn
        for (module, name), fn in _FUNCTIONS.items()
        for core in ("core", "_core")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler whose globals are limited to :data:`_ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a data file has no use for (only numpy "
                "arrays and builtin containers are read)"
            ) from None


def load_data_pickle(file: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` admitting only builtin values and numpy arrays.

    Args:
        file: An open binary file.
        encoding: How Python 2 strings are decoded (``"bytes"`` keeps them as bytes).

    Raises:
        FileFormatError: If the pickle names anything else (a function, a class), or is
            truncated or malformed.

    Example:
        >>> import io
        >>> load_data_pickle(io.BytesIO(pickle.dumps({"x": np.arange(3)})))["x"]
        array([0, 1, 2])
    """
    try:
        value = _DataUnpickler(file, encoding=encoding).load()
    except RecursionError as err:
        raise FileFormatError("the pickle nests too deeply to be data") from err
    except (pickle.UnpicklingError, EOFError, OverflowError, MemoryError) as err:
        raise FileFormatError(f"not a data pickle: {err or type(err).__name__}") from err
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeError) as err:
        raise FileFormatError(f"a malformed pickle ({type(err).__name__}: {err})") from err
    _check_arrays(value, _size(file))
    return value


def _size(file: IO[bytes]) -> int | None:
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # an in-memory file: no bound


def _check_arrays(value: Any, size: int | None) -> None:
    """Refuse arrays a data file cannot hold: ``numpy.ndarray`` called with a shape and
    strides of its own makes a view of a few bytes as large as asked (issue 28: 209 bytes
    posing as 2,000,000 x 3072 with zero strides), which a later copy allocates. A pickled
    array's data is in the file, so it is contiguous and no larger than the file."""
    if isinstance(value, np.ndarray):
        contiguous = value.flags.c_contiguous or value.flags.f_contiguous
        if not contiguous or (size is not None and value.nbytes > size):
            raise FileFormatError(
                f"not a data pickle: an array of shape {value.shape} claims {value.nbytes:,} "
                f"bytes that the file ({size:,} bytes) cannot hold"
                if contiguous
                else f"not a data pickle: an array of shape {value.shape} with strides "
                f"{value.strides} is a view, which a data file never holds"
            )
    elif isinstance(value, dict):
        for item in value.values():
            _check_arrays(item, size)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_arrays(item, size)
