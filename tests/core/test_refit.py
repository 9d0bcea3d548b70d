"""Refit: least squares on the consumers lowers their reconstruction error, never raises the
calibration loss, and replays to the same weights when a run resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gfsprune import Macs, PruneConfig, prune
from gfsprune.core import refit as refit_module
from gfsprune.core.losses import DistillLoss
from gfsprune.core.refit import refit_consumers
from gfsprune.surgery import Masks, find_layers
from tests.nets import Chain, randomize_norms


def _batches(model: nn.Module, count: int = 4, size: int = 16, seed: int = 0):
    """Random inputs whose targets are ``model``'s own outputs (what refitting restores):
    the loss is :data:`LOSS`, zero for the unpruned model."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(size, 2, 6, 6, generator=g) for _ in range(count)]
    with torch.no_grad():
        return [(x, model(x)) for x in inputs]


LOSS = DistillLoss("mse")


def prune_half(model: nn.Module, data, config: PruneConfig, **options):
    """``prune`` to ``Macs(0.5)`` under :data:`LOSS`, quietly (``options`` passed on)."""
    return prune(
        model,
        data,
        data[0][0][:1],
        target=Macs(0.5),
        config=config,
        loss_fn=LOSS,
        progress=False,
        **options,
    )


def _c2_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.c2.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("layer_index", [0, 1])  # c2 (a convolution) or fc (linear) refit
def test_refit_lowers_the_reconstruction_error_and_not_the_loss(layer_index: int) -> None:
    torch.manual_seed(0)
    unpruned = randomize_norms(Chain(width=16))
    work = copy.deepcopy(unpruned)
    original = copy.deepcopy(unpruned.state_dict())
    batches = _batches(unpruned)
    layers, _ = find_layers(work, batches[0][0][:1])
    layer = layers[layer_index]
    loss = LOSS
    with Masks(work, layers) as masks:
        masks.set(layer, [0, 3, 5, 6, 9, 12], 16 / 6)
        before = refit_module._calibration_loss(work, batches, loss)
        reference = _c2_outputs(unpruned, batches[0][0])
        error_before = (_c2_outputs(work, batches[0][0]) - reference).pow(2).mean()
        names = refit_consumers(work, unpruned, layer, masks, batches, loss)
        after = refit_module._calibration_loss(work, batches, loss)
        error_after = (_c2_outputs(work, batches[0][0]) - reference).pow(2).mean()
    assert names == (["c2"] if layer_index == 0 else ["fc"])
    assert after <= before
    if layer_index == 0:
        assert error_after < 0.5 * error_before  # c2 reproduces the unpruned c2 better
    for key, value in unpruned.state_dict().items():  # the reference is not touched
        assert torch.equal(value, original[key])


def test_a_refit_that_raises_the_loss_is_rolled_back(monkeypatch) -> None:
    torch.manual_seed(0)
    unpruned = randomize_norms(Chain(width=8))
    work = copy.deepcopy(unpruned)
    batches = _batches(unpruned, 2)
    layers, _ = find_layers(work, batches[0][0][:1])
    losses = iter([1.0, 2.0])  # before, after: the refit made it worse
    monkeypatch.setattr(refit_module, "_calibration_loss", lambda *a: next(losses))
    with Masks(work, layers) as masks:
        masks.set(layers[0], [0, 2, 5], 8 / 3)
        names = refit_consumers(work, unpruned, layers[0], masks, batches, nn.functional.mse_loss)
    assert names == []
    torch.testing.assert_close(work.c2.weight, unpruned.c2.weight, rtol=0, atol=0)


def test_prune_with_refit_meets_the_budget_and_resumes_to_the_same_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomize_norms(Chain(width=24))
    data = _batches(model, 6, 8)
    # the network loss's selection, which leaves the consumers' weights as they were
    config = PruneConfig(objective="loss", refit=True, candidates=4)
    plain = prune_half(model, data, PruneConfig(objective="loss", candidates=4))
    first = prune_half(model, data, config, checkpoint=tmp_path / "p.json")
    assert first.macs_ratio == pytest.approx(plain.macs_ratio)
    assert first.macs_ratio == pytest.approx(0.5, rel=0.02)
    # the first layer's choice is the same; its consumer c2 then holds refit weights
    assert first.plan[0].kept == plain.plan[0].kept
    assert not torch.allclose(first.model.c2.weight, plain.model.c2.weight)
    resumed = prune_half(model, data, config, checkpoint=tmp_path / "p.json")  # all restored
    for a, b in zip(
        first.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
