"""Output folders: a job writes only into a new folder or into one it wrote itself.

Each job (``train``, ``prune``, ``finetune``, ``compare``, ``demo``) records in ``run.json``
which job wrote the folder and with which settings. :func:`claim` checks a folder before any
work starts: a new or empty folder is taken; a folder of the same job is continued only when
resuming with equal settings; anything else -- another job's output, a folder gfsprune did
not write, a path under a regular file, a place that cannot be written -- is refused with one
line that names the fix, so nobody's work is ever overwritten. A job holds a lock on its
folder until its process exits, so a second job started into the same folder meanwhile is
refused too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfsprune import distributed
from gfsprune.errors import ConfigError
from gfsprune.io.atomic import write_json
from gfsprune.io.schema import read_json

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["JOBS", "RUN_FILE", "Run", "claim", "read_run", "write_run"]

RUN_FILE = "run.json"
JOBS = ("train", "prune", "finetune", "compare", "demo")
_FORMAT = "gfsprune-run"


@dataclass(frozen=True)
class Run:
    """The record of the job that wrote a folder.

    Attributes:
        job: One of :data:`JOBS`.
        settings: The options that decide the output; a resumed run must repeat them.
        context: What else is worth knowing (library versions, sizes); never compared.
    """

    job: str
    settings: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


def read_run(path: str | os.PathLike) -> Run:
    """The record in a ``run.json``; FileFormatError naming the file if it is damaged."""
    fix = "Delete the folder or choose another output folder (out=)."
    root = read_json(path, fmt=_FORMAT, fix=fix)
    root.keys_exactly("format", "version", "job", "settings", "context")
    root["version"].integer(1, 1)
    job = root["job"].text()
    if job not in JOBS:
        raise root["job"].fail(f"one of {', '.join(JOBS)}")
    settings = dict(root["settings"].require(Mapping, "an object"))
    return Run(job, settings, dict(root["context"].require(Mapping, "an object")))


def write_run(folder: str | os.PathLike, run: Run) -> Path:
    """Write ``folder/run.json`` (atomically)."""
    record = {"format": _FORMAT, "version": 1, "job": run.job, "settings": run.settings}
    return write_json(Path(folder) / RUN_FILE, {**record, "context": run.context})


def claim(folder: str | os.PathLike, run: Run, *, resume: bool) -> Path:
    """Check that ``run`` may write into ``folder``, then create it and record ``run`` there.

    Taken: a folder that does not exist, is empty, or holds nothing but a ``run.json`` (a run
    that stopped before writing anything). A folder that ``run.job`` wrote is continued with
    ``resume=True`` when its settings are equal. Under torchrun every process checks and the
    main process writes.

    Raises:
        ConfigError: The folder holds other work, an earlier run without ``resume``, a run
            with other settings, or cannot be created or written.
    """
    folder = Path(folder)
    if distributed.world_size() == 1:
        _check_place(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(folder, err) from err
        taken = _lock(folder)  # before the checks: two jobs must not both find it free
        try:
            _check(folder, run, resume=resume)
        except ConfigError:
            if taken:
                os.close(_HELD.pop(taken))  # refused: someone else's folder stays free
            raise
    else:
        _check(folder, run, resume=resume)
    distributed.barrier()  # every process has looked before the main one writes
    if distributed.is_main():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_run(folder, run)
        except OSError as err:
            raise _unwritable(folder, err) from err
    return folder


def _unwritable(folder: Path, err: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write the output folder '{folder}' ({err.strerror or err}); choose another "
        "output folder (out=)."
    )


# The output folders this process holds a lock on: (device, inode) of the folder -> its open
# descriptor. The kernel releases a flock when its holder exits, however it exits (kill -9
# too), so a lock is never stale; one process may claim its own folder again.
_HELD: dict[tuple[int, int], int] = {}


def _lock(folder: Path) -> tuple[int, int] | None:
    """Hold an exclusive lock on ``folder`` until this process exits: one writer per output
    folder (issue 28: two runs into one folder mixed their files). Returns its key in
    ``_HELD`` where the lock is new."""
    if fcntl is None:  # not a POSIX system: no lock
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        raise _unwritable(folder, err) from err
    stat = os.fstat(fd)
    key = (stat.st_dev, stat.st_ino)
    if key in _HELD:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise ConfigError(
            f"another gfsprune job is writing into the output folder '{folder}' right now; "
            "wait for it to end, or choose another output folder (out=)."
        ) from err
    _HELD[key] = fd
    return key


def _check_place(folder: Path) -> bool:
    """Whether ``folder`` exists; ConfigError where it cannot be (under a file) or cannot be
    created."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(
            f"the output folder '{folder}' is under '{existing}', a file; choose another "
            "output folder (out=) or delete it."
        )
    if existing != folder:
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot create the output folder '{folder}': '{existing}' is not writable; "
                "choose another output folder (out=)."
            )
        return False
    return True


def _check(folder: Path, run: Run, *, resume: bool) -> None:
    fix = "choose another output folder (out=) or delete it"
    if not _check_place(folder):
        return
    try:
        entries = {p.name for p in folder.iterdir()}
    except OSError as err:
        raise ConfigError(
            f"cannot list the output folder '{folder}' ({err.strerror}); {fix}."
        ) from err
    if not entries - {RUN_FILE}:
        return
    if RUN_FILE not in entries:
        raise ConfigError(
            f"the output folder '{folder}' holds files gfsprune {run.job} did not write; "
            f"{fix}, so nothing in it is replaced."
        )
    before = read_run(folder / RUN_FILE)
    if before.job != run.job:
        raise ConfigError(
            f"the output folder '{folder}' holds the output of `gfsprune {before.job}`, which "
            f"a {run.job} run would replace; {fix}."
        )
    if not resume:
        raise ConfigError(
            f"'{folder}' holds an earlier {run.job} run; pass resume=True to "
            "continue it, or choose another output folder (out=) to start over."
        )
    now = json.loads(json.dumps(run.settings))  # as read back: tuples become lists
    changed = sorted(k for k in {*before.settings, *now} if before.settings.get(k) != now.get(k))
    if changed:
        was = ", ".join(f"{k}={before.settings.get(k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume '{folder}': the run was started with other {', '.join(changed)} "
            f"({was}); resume with the same options or choose another output folder (out=)."
        )
