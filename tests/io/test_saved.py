"""save/load without pickle, refusals of mismatched bases, and ONNX export."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from gfsprune import Macs, PruneConfig, Widths, export_onnx, load, prune, save
from gfsprune.errors import FileFormatError, ModelError
from gfsprune.io.saved import read_plan, save_with_plan
from tests.nets import Chain, Coupled, randomize_norms


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    model = randomize_norms(Coupled())
    data = [(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,)))]
    return prune(
        model,
        data,
        data[0][0][:2],
        target=Macs(0.6),
        progress=False,
        config=PruneConfig(candidates=3),
    )


def test_round_trip_gives_identical_outputs(result, tmp_path) -> None:
    save(result, tmp_path, metadata={"note": "x"})
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["layers"][0]["kept"] == result.plan[0].kept
    assert plan["metadata"] == {"note": "x"} and plan["architecture"] == "Coupled"
    loaded = load(tmp_path, Coupled())
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(loaded(x), result.model.eval()(x), rtol=0, atol=0)


def test_a_retrained_pruned_model_is_saved_with_the_plan_it_came_from(result, tmp_path) -> None:
    save(result, tmp_path / "pruned", metadata={"note": "x"})
    tuned = load(tmp_path / "pruned", Coupled())
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(1.0)  # as fine-tuning would change them
    plan = read_plan(tmp_path / "pruned")
    plan["metadata"] = {"note": "x", "finetune": {"epochs": 1}}
    save_with_plan(tuned, plan, tmp_path / "tuned")
    again = read_plan(tmp_path / "tuned")
    assert again["layers"] == read_plan(tmp_path / "pruned")["layers"]
    assert again["metadata"] == plan["metadata"]
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(load(tmp_path / "tuned", Coupled())(x), tuned(x), rtol=0, atol=0)


def test_mismatched_base_is_refused(result, tmp_path) -> None:
    save(result, tmp_path)
    with pytest.raises(ModelError, match="made for a Coupled, but the base model is a Chain"):
        load(tmp_path, Chain())
    with pytest.raises(ModelError, match="do not fit the .*does not fit the save"):
        load(tmp_path, Coupled(classes=7))


def test_incomplete_or_foreign_folders_are_refused(result, tmp_path) -> None:
    with pytest.raises(ModelError, match="No plan.json in"):
        load(tmp_path, Coupled())
    save(result, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="model.safetensors.*the save is incomplete"):
        load(tmp_path, Coupled())
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="plan.json' is not valid JSON"):
        load(tmp_path, Coupled())
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(FileFormatError, match="plan.json' is not a 'gfsprune-plan' file"):
        load(tmp_path, Coupled())


def _damage(plan: dict, where: str, value: object) -> None:
    """Set (or with ``...`` delete) the field at a dotted path such as ``layers.0.kept``."""
    *parents, last = where.split(".")
    for key in parents:
        plan = plan[int(key)] if key.isdigit() else plan[key]
    if value is ...:
        del plan[last]
    else:
        plan[last] = value


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("layers", ..., "field 'layers' is missing"),
        ("layers", None, "field 'layers' must be a list, got None"),
        ("layers", "conv", "field 'layers' must be a list, got 'conv'"),
        ("layers.0.kept", None, r"field 'layers\[0\].kept' must be a list"),
        ("layers.0.kept", [0, 0], "must be a non-empty list of distinct channels"),
        ("layers.0.width", 10**12, r"must be an integer in \[1, 1048576\]"),
        ("example_inputs.dtype", "evil", "must be a torch dtype name"),
        ("example_inputs.dtype", ..., "field 'example_inputs.dtype' is missing"),
        ("example_inputs.shape", [2, -3, 4, 4], r"'example_inputs.shape\[1\]' must be an int"),
        ("example_inputs.shape", [10**6, 10**6], "with at most 67,108,864 values"),
        ("macs_after", -1, "field 'macs_after' must be an integer >= 0"),
        ("metadata", [], "field 'metadata' must be an object"),
    ],
)
def test_a_damaged_plan_is_one_error_naming_the_field(result, tmp_path, where, value, message):
    save(result, tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    _damage(plan, where, value)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(FileFormatError, match=message) as caught:
        load(tmp_path, Coupled())
    assert str(tmp_path / "plan.json") in str(caught.value) and "\n" not in str(caught.value)


def test_files_are_written_with_the_umask(result, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        save(result, tmp_path)
    finally:
        os.umask(old)
    for name in ("plan.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "plan.json"]


def test_onnx_export_matches_onnxruntime(result, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(result.model, torch.randn(2, 3, 4, 4), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 4, 4)  # another batch size: the batch axis is dynamic
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, result.model(x).detach(), rtol=1e-4, atol=1e-5)


class _Versioned(Chain):
    """A network whose state-dict loader reads its module version, as torchvision's MNASNet
    does: loading a state dict without ``_metadata`` fails."""

    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        if local_metadata.get("version") != self._version:
            raise ValueError(f"version should be 2, got {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_a_model_whose_loader_reads_module_versions_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomize_norms(_Versioned())
    x = torch.randn(8, 2, 4, 4)
    data = [(x, torch.randint(0, 3, (8,)))]
    pruned = prune(
        model, data, x[:2], target=Macs(0.6), progress=False, config=PruneConfig(candidates=3)
    )
    save(pruned, tmp_path)
    torch.testing.assert_close(load(tmp_path, _Versioned())(x), pruned.model.eval()(x))


class _Aliased(nn.Module):
    """A module registered under two names (timm's CoaT): its tensors share memory."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), nn.Linear(4, 2)
        self.alias = self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.alias(torch.relu(self.a(x))).mean((2, 3)))


def test_a_module_registered_twice_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    data = [(torch.randn(4, 3, 4, 4), torch.randint(0, 2, (4,)))] * 3
    result = prune(_Aliased(), data, data[0][0][:1], target=Widths({"a": 3}), progress=False)
    save(result, tmp_path)
    loaded = load(tmp_path, _Aliased())
    assert loaded.alias is loaded.b and loaded.b.in_channels == 3
    torch.testing.assert_close(loaded(data[0][0]), result.model(data[0][0]), rtol=0, atol=0)
