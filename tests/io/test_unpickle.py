"""The data unpickler reads numpy arrays and builtin values and runs no code."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from gfsprune.errors import FileFormatError
from gfsprune.io.unpickle import load_data_pickle


class Payload:
    """Unpickling this with ``pickle.load`` calls ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_and_builtins_round_trip(protocol: int) -> None:
    value = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        b"labels": [1, 2, 3],
        "scalar": np.int64(7),
        "nested": (1.5, None, True, {"x": "y"}),
    }
    loaded = load_data_pickle(io.BytesIO(pickle.dumps(value, protocol=protocol)), encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], np.arange(12).reshape(3, 4))
    assert loaded["scalar"] == 7 and loaded["nested"] == (1.5, None, True, {"x": "y"})


@pytest.mark.parametrize(
    ("function", "name"),
    [(os.system, "posix.system"), (exec, "builtins.exec"), (eval, "builtins.eval")],
)
def test_a_payload_is_refused_by_name_and_never_runs(tmp_path: Path, function, name) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    args = (f"touch {marker}",) if function is os.system else (code,)
    data = pickle.dumps({b"data": Payload(function, *args)})
    with pytest.raises(FileFormatError, match=f"it names {name}, which a data file has no use"):
        load_data_pickle(io.BytesIO(data), encoding="bytes")
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"0123456789", b"\x80\x02}q\x00(X\x04\x00", b""])
def test_truncated_or_junk_bytes_are_one_error(data: bytes) -> None:
    with pytest.raises(FileFormatError, match="pickle"):
        load_data_pickle(io.BytesIO(data), encoding="bytes")
