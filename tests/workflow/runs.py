"""Helpers of the command-line tests."""

from __future__ import annotations

import subprocess
import sys

#: Options that keep the command line's runs small and quiet.
FAST = ["--no-progress", "--batch-size", "64"]


def one_line_error(capsys, command: str) -> str:
    """The captured stderr, checked to be one ``gfsprune COMMAND: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith(f"gfsprune {command}: error: ") and err.count("\n") == 1, err
    return err


def shell_error(*argv: str) -> str:
    """Run ``python -m gfsprune ARGV`` in a new process; its stderr, checked to be one line
    with exit status 2 and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "gfsprune", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr
