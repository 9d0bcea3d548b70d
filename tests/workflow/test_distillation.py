"""Distillation in the jobs: label-free pruning and fine-tuning of image models on images:DIR,
labels mixed in where there are some, and eval's agreement with the unpruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gfsprune import models
from gfsprune.errors import ConfigError, ModelError
from gfsprune.io.results import read_results
from gfsprune.workflow.cli import main
from gfsprune.workflow.data import load_data
from gfsprune.workflow.distillation import Distillation, agreement, load_teacher, teacher_record
from gfsprune.workflow.loading import load_model
from tests.workflow.runs import FAST, one_line_error
from tests.workflow.test_data import write_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(6):
        write_image(root / ("deep/er" if i % 2 else ".") / f"{i}.jpg", (48, 36), i)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    torch.save(_net().state_dict(), path)
    return path


def _net() -> torch.nn.Module:
    return models.get("digits_cnn", num_classes=5, in_channels=3, image_size=16)


def _spec(photos: Path, weights: Path) -> list[str]:
    return [
        *("--model", "digits_cnn", "--weights", str(weights), "--num-classes", "5"),
        *("--input-size", "3,16,16", "--data", f"images:{photos}"),
    ]


def test_the_kind_and_alpha_follow_the_model_and_the_labels(photos) -> None:
    images, digits = load_data(f"images:{photos}", image_size=16), load_data("digits")
    net = _net()
    loss = Distillation().loss(net, images)
    assert (loss.kind, loss.temperature, loss.alpha) == ("kl", 1.0, 0.0)
    assert Distillation(temperature=2).loss(models.get("digits_cnn"), digits).alpha == 0.5
    with pytest.raises(ConfigError, match=r"alpha .* weighs labels, but data .* has none"):
        Distillation(alpha=0.3).loss(net, images)
    features = torch.nn.Conv2d(3, 4, 3)  # feature maps, not (batch, classes) logits
    assert Distillation().loss(features, images).kind == "mse"


def test_a_model_agrees_with_itself(photos) -> None:
    images = load_data(f"images:{photos}", image_size=16)
    net = _net().eval()
    scores = agreement(net, net, images.test, labelled=False)
    assert scores["agree"] == 1.0 and abs(scores["kl"]) < 1e-6
    other = agreement(_net().eval(), net, images.test, labelled=False)
    assert other["kl"] > 0


def test_a_changed_or_missing_teacher_is_refused(tmp_path, weights) -> None:
    copy = tmp_path / "w.pt"
    copy.write_bytes(weights.read_bytes())
    record = teacher_record(copy, seed=0)
    info = models_info()
    assert isinstance(load_teacher(info, record, spec=None, where=tmp_path), torch.nn.Module)
    torch.save(_net().state_dict() | {"extra": torch.zeros(1)}, copy)
    with pytest.raises(ModelError, match=r"changed since .* was written"):
        load_teacher(info, record, spec=None, where=tmp_path)
    copy.unlink()
    with pytest.raises(ModelError, match=r"are gone"):
        load_teacher(info, record, spec=None, where=tmp_path)


def models_info():
    from gfsprune.io.model_info import ModelInfo

    options = {"num_classes": 5, "in_channels": 3, "image_size": 16}
    return ModelInfo("digits_cnn", options, "images:x", (3, 16, 16), {})


def test_label_free_prune_finetune_and_eval_need_no_more_flags(
    tmp_path, photos, weights, capsys
) -> None:
    out = tmp_path / "pruned"
    argv = ["prune", *_spec(photos, weights), "--distill", "--macs", "0.5", "--out", str(out)]
    assert main([*argv, "--candidates", "4", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "agree" in printed and "accuracy" not in printed
    plan = json.loads((out / "plan.json").read_text())
    assert plan["metadata"]["distill"] == {"kind": "auto", "temperature": 1.0, "alpha": None}
    assert plan["metadata"]["teacher"]["weights"] == str(weights.resolve())
    assert main(["eval", str(out)]) == 0
    assert "agreement" in capsys.readouterr().out
    assert main(["finetune", str(out), "--distill", "--epochs", "1", "--lr", "0.01", *FAST]) == 0
    assert "agreement" in capsys.readouterr().out
    history = json.loads((out / "finetuned" / "plan.json").read_text())["metadata"]["finetune"]
    assert "test_agree" in history["history"][0] and "test_acc" not in history["history"][0]
    tuned, _ = load_model(out / "finetuned")
    assert main(["eval", str(out / "finetuned")]) == 0
    scores = capsys.readouterr().out
    assert "agreement" in scores and tuned is not None


def test_unlabelled_images_without_distill_are_refused_in_one_line(
    tmp_path, photos, weights, capsys
) -> None:
    argv = ["prune", *_spec(photos, weights), "--macs", "0.5", "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    assert "has no labels, so it can only be distilled on: pass --distill" in one_line_error(
        capsys, "prune"
    )
    assert main(["prune", *argv[1:], "--distill-alpha", "0.5"]) == 2
    assert "--distill-temperature and --distill-alpha go with --distill" in one_line_error(
        capsys, "prune"
    )


def test_with_labels_distillation_mixes_them_in(tmp_path, trained, capsys) -> None:
    out = tmp_path / "pruned"
    argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--out", str(out)]
    assert main([*argv, "--distill", "--distill-temperature", "2", "--candidates", "4", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "agree" in printed
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "agreement" in printed


def test_compare_distils_label_free_and_reports_agreement(
    tmp_path, photos, weights, capsys
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", *_spec(photos, weights), "--distill", "--macs", "0.5", "--out", str(out)]
    argv += ["--methods", "gfs,l1,taylor", "--epochs", "0,1", "--lr", "0.01", "--candidates", "4"]
    assert main([*argv, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "agree 0 ep" in printed and "ranked by agreement" in printed
    results = read_results(out / "results.json")
    assert results["base"]["agree"] == 1.0 and "acc" not in results["base"]
    for row in results["methods"].values():
        assert set(row["epochs"]["1"]) == {"agree", "kl"} and 0 <= row["agree_pruned"] <= 1
    unlabelled = ["compare", *_spec(photos, weights), "--macs", "0.5", "--epochs", "1"]
    assert main([*unlabelled, "--methods", "gfs,l1", "--out", str(tmp_path / "x")]) == 2
    assert "has no labels" in one_line_error(capsys, "compare")
    assert not (tmp_path / "x").exists()
