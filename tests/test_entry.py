"""The console script's entry point and the package's lazy public names."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest

import gfsprune
from gfsprune import _entry


def test_the_console_script_runs_the_cli(monkeypatch) -> None:
    from importlib.metadata import entry_points

    from gfsprune.workflow import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "gfsprune"]
    assert script.load() is _entry.main
    monkeypatch.setattr(cli, "main", lambda: 7)
    assert _entry.main() == 7


def test_importing_the_package_imports_no_torch() -> None:
    code = "import sys, gfsprune; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_every_public_name_loads() -> None:
    for name in gfsprune.__all__:
        assert getattr(gfsprune, name) is not None
    assert set(gfsprune.__all__) <= set(dir(gfsprune))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        gfsprune.nothing  # noqa: B018


def test_ctrl_c_while_starting_exits_130_in_one_line(monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "gfsprune.workflow.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert _entry.main() == 130
    assert capsys.readouterr().err == "gfsprune: interrupted while starting.\n"
