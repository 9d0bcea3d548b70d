"""save/load without pickle, refusals of mismatched bases, and ONNX export."""

from __future__ import annotations

import json

import pytest
import torch

from gfsprune import Macs, PruneConfig, export_onnx, load, prune, save
from gfsprune.errors import ModelError
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


def test_mismatched_base_is_refused(result, tmp_path) -> None:
    save(result, tmp_path)
    with pytest.raises(ModelError, match="made for a Coupled, but the base model is a Chain"):
        load(tmp_path, Chain())
    with pytest.raises(ModelError, match="do not fit the base model"):
        load(tmp_path, Coupled(classes=7))


def test_incomplete_or_foreign_folders_are_refused(result, tmp_path) -> None:
    with pytest.raises(ModelError, match="No plan.json in"):
        load(tmp_path, Coupled())
    save(result, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="model.safetensors.*the save is incomplete"):
        load(tmp_path, Coupled())
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load(tmp_path, Coupled())
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(ModelError, match="not a gfsprune plan"):
        load(tmp_path, Coupled())


def test_onnx_export_matches_onnxruntime(result, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(result.model, torch.randn(2, 3, 4, 4), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 4, 4)  # another batch size: the batch axis is dynamic
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, result.model(x).detach(), rtol=1e-4, atol=1e-5)
