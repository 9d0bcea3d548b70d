"""Helpers of the command-line tests."""

from __future__ import annotations

#: Options that keep the command line's runs small and quiet.
FAST = ["--no-progress", "--batch-size", "64"]


def one_line_error(capsys, command: str) -> str:
    """The captured stderr, checked to be one ``gfsprune COMMAND: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith(f"gfsprune {command}: error: ") and err.count("\n") == 1, err
    return err
