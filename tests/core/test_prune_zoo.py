"""Every zoo model, selected by the network loss: Macs(0.5) within 2%, a runnable smaller
model that equals the masked one (the loss leaves the weights as they were), a save/load
round trip and an ONNX export that onnxruntime reproduces. The ``curves`` allocator runs on
one model of each family (plain, residual, depthwise with squeeze-excitation), which also
prune with the default options (the reconstruction objective, which refits the consumers);
the others take ``uniform`` widths, the same selection at half the cost."""

from __future__ import annotations

import pytest
import torch

from gfsprune import Macs, PruneConfig, export_onnx, load, models, prune, save
from gfsprune.surgery import Masks, find_layers

CURVES = {"digits_cnn", "resnet20", "resnet18", "mobilenet_v3_small"}


def _model(name: str):
    if name == "digits_cnn":  # already tiny: a quarter of it is too coarse for a 2% budget
        return models.get(name), (1, 8, 8)
    options = {"small_input": True} if "mobilenet" in name or "proxyless" in name else {}
    return models.get(name, num_classes=7, width_mult=0.25, **options), (3, 32, 32)


def _check_default(model: torch.nn.Module, data) -> None:
    """``model`` prunes to ``Macs(0.5)`` with the default options, and the result trains."""
    x = data[0][0]
    result = prune(model, data, x[:1], target=Macs(0.5), progress=False)
    assert result.macs_ratio == pytest.approx(0.5, rel=0.02)
    pruned = result.model.train()
    out = pruned(torch.cat([x, x]))
    with torch.no_grad():
        assert out.shape == (2 * len(x), *model(x).shape[1:])
    out.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_zoo_model_prunes_to_half_the_macs(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model, shape = _model(name)
    model.eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, *shape, generator=g), torch.randint(0, 7, (4,), generator=g))]
    x = data[0][0]
    allocator = "curves" if name in CURVES else "uniform"
    config = PruneConfig(objective="loss", candidates=2, allocator=allocator)
    result = prune(model, data, x[:1], target=Macs(0.5), progress=False, config=config)
    assert result.macs_ratio == pytest.approx(0.5, rel=0.02)
    if name in CURVES:
        _check_default(model, data)

    # The masked original computes what the physically smaller model does.
    layers, _ = find_layers(model, x[:1])
    with Masks(model, layers) as masks, torch.no_grad():
        for layer, plan in zip(layers, result.plan, strict=True):
            assert layer.name == plan.name
            masks.set(layer, plan.kept, plan.scale)
        masked = model(x)
    pruned = result.model.eval()
    torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-4)

    out = pruned.train()(torch.cat([x, x]))  # training mode: BN needs more than one sample
    out.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
    pruned.eval()

    save(result, tmp_path)
    loaded = load(tmp_path, _model(name)[0])
    torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)

    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(pruned, x[:2], tmp_path / "model.onnx", check=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, pruned(x).detach(), rtol=1e-3, atol=1e-4)
