"""Atomic writes: a full disk is one error, and leaves nothing half-written behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gfsprune.errors import ConfigError
from gfsprune.io.atomic import write_atomic

_FULL = os.strerror(errno.ENOSPC)


def _fails_with(error: Exception):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    return write


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, _FULL),  # matplotlib's savefig
        RuntimeError(f"[enforce fail at inline_container.cc:626] . {_FULL}"),  # torch.save
        Exception(f'Error while serializing: IoError(Os {{ code: 28, message: "{_FULL}" }})'),
    ],
    ids=["oserror", "torch-save", "safetensors"],
)
def test_a_full_disk_is_one_error_and_leaves_no_file(tmp_path: Path, error) -> None:
    (tmp_path / "plan.json").write_text("old")
    with pytest.raises(ConfigError, match=f"cannot write .*weights.bin' \\({_FULL}\\); free"):
        write_atomic(tmp_path / "weights.bin", _fails_with(error))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_torch_saves_short_write_is_one_error(tmp_path: Path) -> None:
    error = RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")
    with pytest.raises(ConfigError, match=r"torch.save could not write: .*unexpected pos"):
        write_atomic(tmp_path / "checkpoint.pt", _fails_with(error))
    assert not list(tmp_path.iterdir())


def test_other_errors_of_the_writer_are_not_disguised(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="a bug"):
        write_atomic(tmp_path / "x", _fails_with(TypeError("a bug")))
    assert not list(tmp_path.iterdir())
