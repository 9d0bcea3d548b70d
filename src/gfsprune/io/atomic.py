"""The one way gfsprune writes a file: atomically, with the process umask's permissions.

A temporary file in the same folder is written, given the permissions a plain ``open()``
would have given it (``tempfile`` creates it 0600), then renamed over the target, so a
half-written file never replaces a good one and an interrupted write leaves nothing behind. A
write that fails for want of space (or of a working disk) is one ``ConfigError``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from gfsprune.errors import ConfigError, first_line

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
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as err:
        reason = _system_failure(err)
        if reason is None:
            raise
        raise ConfigError(
            f"cannot write '{path}' ({reason}); free some space or choose another output "
            "folder (out=). Nothing was written in its place."
        ) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


# What the system says when a write fails for want of room or a working disk; writers of
# other formats (safetensors, torch.save's zip writer, matplotlib) quote it in their own
# exception types (issue 28: a full disk gave a SafetensorError traceback).
_SYSTEM_FAILURES = tuple(
    os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)
)


def _system_failure(err: Exception) -> str | None:
    """The system's reason why a write failed, or ``None`` for another kind of error."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    found = next((text for text in _SYSTEM_FAILURES if text in str(err)), None)
    if found is None and "inline_container.cc" in str(err):
        # torch.save's zip writer reports a short write ("unexpected pos ..."), not errno
        found = f"torch.save could not write: {first_line(err)}; is the disk full?"
    return found


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8), atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value: object) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return write_text(path, json.dumps(value, indent=1))
