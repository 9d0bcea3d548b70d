"""Weights from a file: safetensors or a PyTorch weights file in its common shapes, one error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gfsprune import models
from gfsprune.errors import FileFormatError, ModelError


def _net(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, classes)
    )


def _same(a: nn.Module, b: nn.Module) -> None:
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "state_dict", "model", "module-prefix", "model-prefix"],
)
def test_a_pytorch_weights_file_round_trips(tmp_path: Path, wrap) -> None:
    trained = _net(seed=1)
    torch.save(wrap(trained.state_dict()), tmp_path / "w.pth")
    _same(models.load_weights(_net(), tmp_path / "w.pth"), trained)


def test_safetensors_round_trip_and_get_with_weights(tmp_path: Path) -> None:
    trained = models.get("resnet20", num_classes=4)
    save_file(
        {k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors"
    )
    _same(models.get("resnet20", num_classes=4, weights=tmp_path / "w.safetensors"), trained)


def test_older_weights_files_without_num_batches_tracked_load(tmp_path: Path) -> None:
    trained = _net(seed=1)
    weights = {k: v for k, v in trained.state_dict().items() if "num_batches" not in k}
    torch.save(weights, tmp_path / "w.pth")
    _same(models.load_weights(_net(), tmp_path / "w.pth"), trained)


def test_a_mismatch_lists_missing_unexpected_and_shapes_in_one_message(tmp_path: Path) -> None:
    weights = _net(classes=5).state_dict()
    del weights["0.bias"]
    weights["extra.weight"] = torch.zeros(1)
    torch.save(weights, tmp_path / "w.pth")
    with pytest.raises(ModelError) as info:
        models.load_weights(_net(classes=3), tmp_path / "w.pth")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "w.pth") in message
    assert "1 missing keys (0.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert (
        "2 shape differences (3.weight (5, 144) in the file, (3, 144) in the model, 3.bias"
        in message
    )


def test_many_missing_keys_are_shown_first_few_with_the_count(tmp_path: Path) -> None:
    torch.save({"other": torch.zeros(1)}, tmp_path / "w.pth")
    count = len(_net().state_dict()) - 1  # num_batches_tracked may be absent
    match = rf"{count} missing keys \(0.weight, 0.bias, 1.weight, \.\.\.\)"
    with pytest.raises(ModelError, match=match):
        models.load_weights(_net(), tmp_path / "w.pth")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("w.safetensors", b"not a safetensors file", r"is damaged or not weights"),
        ("w.pth", b"PK\x03\x04 truncated", r"weights file '.*w.pth'"),
        ("w.pth", None, r"^weights file '.*w.pth' does not exist; check the path$"),
    ],
)
def test_a_damaged_or_missing_file_is_one_line_naming_it(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(FileFormatError, match=message) as info:
        models.load_weights(_net(), tmp_path / name)
    assert "\n" not in str(info.value)


def test_a_weights_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    torch.save({"weight": Payload()}, tmp_path / "w.pth")
    with pytest.raises(FileFormatError, match=r"weights file '.*w.pth'"):
        models.load_weights(_net(), tmp_path / "w.pth")
    assert not marker.exists()


def test_a_file_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"weight": [1, 2]}}, tmp_path / "w.pth")
    with pytest.raises(FileFormatError, match=r"holds list 'weight' among its tensors"):
        models.load_weights(_net(), tmp_path / "w.pth")
