"""``gfsprune theory``: a quick run end to end, and bad arguments rejected in one line."""

from __future__ import annotations

import json

import pytest

from gfsprune.workflow.cli import main
from tests.workflow.runs import shell_error


@pytest.mark.slow
def test_theory_quick_writes_the_rates_and_prints_the_slopes(tmp_path, capsys) -> None:
    out = tmp_path / "theory"
    assert main(["theory", "--quick", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "rates.json").read_text())
    assert (out / "rates.png").stat().st_size > 10_000
    assert saved["seed"] == 1 and saved["quick"] is True
    assert f"{saved['slopes']['greedy_pretrained']:.2f}" in printed
    assert "greedy_pretrained" in printed and f"wrote {out / 'rates.png'}" in printed


def test_bad_arguments_print_no_traceback_from_the_shell() -> None:
    error = shell_error("theory", "--seed", "abc")
    assert "argument --seed: expected an integer in [0, 2**63), got 'abc'" in error


def test_a_negative_seed_is_refused_in_one_line(tmp_path) -> None:
    error = shell_error("theory", "--seed", "-1", "--out", str(tmp_path))
    assert "argument --seed: expected an integer in [0, 2**63), got '-1'" in error
