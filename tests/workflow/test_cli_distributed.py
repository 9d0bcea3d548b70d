"""``torchrun -m gfsprune``: two gloo processes prune to the single-process plan and fine-tune."""

from __future__ import annotations

import json

import pytest

from gfsprune.workflow.cli import main
from tests.launch import torchrun
from tests.workflow.runs import FAST


@pytest.mark.slow
def test_torchrun_prune_and_finetune(tmp_path) -> None:
    model = tmp_path / "model"
    train = ["train", "--model", "digits_cnn", "--data", "digits", "--epochs", "1"]
    assert main([*train, "--width-mult", "0.5", "--out", str(model), *FAST]) == 0
    prune = ["prune", "--model-dir", str(model), "--macs", "0.5", "--candidates", "4", *FAST]
    assert main([*prune, "--out", str(tmp_path / "single")]) == 0
    done = torchrun("-m", "gfsprune", *prune, "--out", str(tmp_path / "multi"))
    assert done.returncode == 0, done.stderr[-3000:]
    plans = [json.loads((tmp_path / d / "plan.json").read_text()) for d in ("single", "multi")]
    assert [layer["kept"] for layer in plans[0]["layers"]] == [
        layer["kept"] for layer in plans[1]["layers"]
    ]
    done = torchrun("-m", "gfsprune", "finetune", str(tmp_path / "multi"), "--epochs", "1", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "multi" / "finetuned").is_dir()
