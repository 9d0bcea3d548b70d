"""The one way gfsprune writes a file: atomically, with the process umask's permissions.

A temporary file in the same folder is written, given the permissions a plain ``open()``
would have given it (``tempfile`` creates it 0600), then renamed over the target, so a
half-written file never replaces a good one and an interrupted write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary path, then renaming it.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_atomic(folder / "a.txt", lambda tmp: tmp.write_text("hi")).read_text()
        'hi'
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8), atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value: object) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return write_text(path, json.dumps(value, indent=1))
