"""The break-it audit (issue 28): what a user can type or leave in a folder is one line with
exit status 2, or the right result; never a traceback, a hang, or a run over petabytes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gfsprune.workflow.cli import build_parser, main
from tests.workflow.runs import FAST, one_line_error

_PRUNE = ["prune", "--model", "digits_cnn", "--data", "digits", "--macs", "0.5"]
_TRAIN = ["train", "--model", "digits_cnn", "--data", "digits", "--epochs", "1"]


@pytest.mark.parametrize(
    ("argv", "command", "message"),
    [
        (
            [*_PRUNE, "--seed", str(2**70)],
            "prune",
            r"--seed: expected an integer in \[0, 2\*\*63\)",
        ),
        ([*_PRUNE, "--device", "meta"], "prune", "device 'meta' holds no data"),
        ([*_PRUNE, "--threads", "100000"], "prune", "--threads must be an integer from 1 to"),
        (
            ["prune", "--model", "digits_cnn", "--data", "synthetic:100000000000", "--macs", "0.5"],
            "prune",
            "sample count N of 'synthetic:N' must be an integer from 20 to 1,000,000",
        ),
        ([*_TRAIN, "--width-mult", "1e6"], "train", r"width_mult must be a float in \(0, 16\]"),
        ([*_TRAIN, "--workers", "100000"], "train", "--workers: expected an integer from 0 to"),
    ],
    ids=["seed", "meta", "threads", "synthetic", "width-mult", "workers"],
)
def test_out_of_range_options_are_one_line(argv, command, message, tmp_path, capsys) -> None:
    assert _status([*argv, "--out", str(tmp_path / "out"), *FAST]) == 2
    assert re.search(message, one_line_error(capsys, command))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _status(argv: list[str]) -> int:
    """``main``'s exit status, also where argparse exits (a bad option's value)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def test_a_results_row_missing_a_budget_is_measured_again_on_resume(
    trained: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "compare"
    argv = ["compare", "--model-dir", str(trained), "--macs", "0.5", "--epochs", "0,1"]
    argv += ["--methods", "gfs,random", "--candidates", "2", "--out", str(out), *FAST]
    assert main(argv) == 0
    path = out / "results.json"
    results = json.loads(path.read_text())
    del results["methods"]["gfs"]["epochs"]["1"]
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "After 1 epochs of fine-tuning" in capsys.readouterr().out
    again = json.loads(path.read_text())["methods"]
    assert set(again["gfs"]["epochs"]) == {"0", "1"}
    assert again["random"] == results["methods"]["random"]  # complete: reused


def test_a_full_disk_while_prune_saves_is_one_line_and_no_result(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def full(_tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise Exception(
            'Error while serializing: IoError(Os { message: "No space left on device" })'
        )

    out = tmp_path / "p"
    argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--candidates", "2"]
    with monkeypatch.context() as patch:
        patch.setattr("gfsprune.io.saved.save_file", full)
        assert main([*argv, "--out", str(out), *FAST]) == 2
    assert "No space left on device" in one_line_error(capsys, "prune")
    assert not (out / "model.safetensors").exists() and not list(out.glob(".*tmp"))
    assert main(["eval", str(out)]) == 2  # what is there is not taken for a result
    one_line_error(capsys, "eval")
    assert main([*argv, "--out", str(out), "--resume", *FAST]) == 0  # space again: it ends
    assert (out / "model.safetensors").exists()


def test_eval_of_weights_holding_nan_is_one_line(pruned: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "nan"
    shutil.copytree(pruned, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "model.safetensors")
    assert main(["eval", str(folder)]) == 2
    assert f"hold NaN or infinite values (first in '{name}')" in one_line_error(capsys, "eval")


def test_a_relative_data_path_is_recorded_resolved(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cifar").mkdir()
    (tmp_path / "2000").write_text("")  # a file named like a count changes nothing
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    args = parser.parse_args(["prune", "--model", "resnet20", "--data", "cifar10:cifar"] + _OUT)
    assert args.data == f"cifar10:{tmp_path / 'cifar'}"
    for spec in ("synthetic:2000", "cifar10:missing", "digits"):
        assert parser.parse_args(["prune", "--model", "x", "--data", spec] + _OUT).data == spec


_OUT = ["--macs", "0.5", "--out", "o"]
