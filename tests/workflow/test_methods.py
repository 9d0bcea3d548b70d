"""The comparison methods that choose their own widths: the MACs bisection, and Torch-Pruning's
pipelines matched to greedy selection's MACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_pruning.pruner.importance import GroupMagnitudeImportance

from gfsprune import Macs, PruneConfig, count, prune
from gfsprune.models import get
from gfsprune.surgery import find_layers, prune_channels
from gfsprune.workflow.data import load_data, make_loader
from gfsprune.workflow.methods import (
    METHODS,
    MethodContext,
    TorchPruning,
    importance_channels,
    match_macs,
)
from gfsprune.workflow.train import TrainConfig, fit
from tests.nets import GroupedBlock, randomize_norms, tiny_vit

EXAMPLE = torch.zeros(1, 10)
EXAMPLE_IMAGE = torch.zeros(1, 1, 8, 8)


def _linear(out: int) -> nn.Module:
    """A model of ``10 * out`` MACs on EXAMPLE."""
    return nn.Linear(10, max(out, 1), bias=False)


def test_match_macs_finds_the_ratio_within_the_tolerance() -> None:
    tried = []

    def prune_at(ratio: float) -> nn.Module:
        tried.append(ratio)
        return _linear(100 - int(100 * ratio))

    matched = match_macs(prune_at, EXAMPLE, macs=1000, target=0.37)
    assert matched.within and abs(matched.share - 0.37) <= 0.01 * 0.37
    assert matched.steps == len(tried) and matched.ratio == tried[-1]
    assert count(matched.model, EXAMPLE)[0] / 1000 == matched.share


def test_match_macs_treats_a_group_left_whole_as_too_far() -> None:
    # Above 0.6 the "pruner" leaves everything (as Torch-Pruning does rather than empty a
    # group): more MACs than at a smaller ratio means the ratio was too large.
    def prune_at(ratio: float) -> nn.Module:
        return _linear(100 if ratio > 0.6 else 100 - int(100 * ratio))

    matched = match_macs(prune_at, EXAMPLE, macs=1000, target=0.45)
    assert matched.within and matched.ratio <= 0.6


def test_match_macs_returns_the_closest_when_the_steps_cannot_reach() -> None:
    def prune_at(ratio: float) -> nn.Module:
        return _linear(10 * (10 - int(10 * ratio)))  # steps of 10% of the MACs

    matched = match_macs(prune_at, EXAMPLE, macs=1000, target=0.55, steps=6)
    assert not matched.within and matched.steps == 6
    assert matched.share in (0.5, 0.6)


@pytest.fixture(scope="module")
def context() -> MethodContext:
    """Greedy selection at half the MACs of a digits CNN trained for one epoch."""
    digits = load_data("digits")
    torch.manual_seed(0)
    model = get("digits_cnn")
    fit(model, digits, TrainConfig(epochs=1, batch_size=64, lr=0.05), progress=False, device="cpu")
    model.eval()

    def loader():
        return make_loader(digits.train, batch_size=64, shuffle=True, seed=0)

    options = PruneConfig(candidates=8, seed=0, device=torch.device("cpu"))
    greedy = prune(model, loader(), EXAMPLE_IMAGE, target=Macs(0.5), config=options, progress=False)
    return MethodContext(
        model=model,
        greedy=greedy,
        loader=loader,
        example_inputs=EXAMPLE_IMAGE,
        prune=options,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if isinstance(m, TorchPruning)])
def test_torch_pruning_pipelines_reach_greedy_selections_macs(context, name) -> None:
    before = {k: v.clone() for k, v in context.model.state_dict().items()}
    pruned = METHODS[name].build(context)
    torch.testing.assert_close(context.model.state_dict(), before, rtol=0, atol=0)
    macs = count(pruned, EXAMPLE_IMAGE)[0] / context.greedy.macs_before
    # within 1% where a channel step allows it; one channel of the widest layer at most off
    assert macs == pytest.approx(context.greedy.macs_ratio, rel=0.05)
    assert pruned(EXAMPLE_IMAGE).shape == context.model(EXAMPLE_IMAGE).shape  # classifier kept
    assert all(p.grad is None for p in pruned.parameters())
    widths = _conv_widths(pruned)
    full = _conv_widths(context.model)
    assert widths != full
    if name == "tp-l1":  # uniform: the same share of every layer, to a channel
        shares = [w / f for w, f in zip(widths, full, strict=True)]
        assert max(shares) - min(shares) <= 1 / min(full)


def test_importance_keeps_whole_items_of_grouped_convolutions() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 3, 6, 6)
    grouped = next(layer for layer in find_layers(model, x)[0] if layer.item_size > 1)
    width = grouped.width // 2 // grouped.item_size * grouped.item_size
    kept = importance_channels(model, x, {grouped.name: width}, GroupMagnitudeImportance(p=1))
    assert len(kept[grouped.name]) == width
    assert set(kept[grouped.name]) == set(grouped.channels(grouped.items_of(kept[grouped.name])))
    pruned = prune_channels(model, x, kept)  # a split item would be refused here
    assert pruned(x).shape == model(x).shape


def test_importance_scores_attention_heads_whole() -> None:
    pytest.importorskip("timm")
    model = tiny_vit(depth=1)
    x = torch.randn(2, 3, 16, 16)
    heads = next(layer for layer in find_layers(model, x)[0] if layer.units is not None)
    widths = {heads.name: 2 * heads.item_size}
    kept = importance_channels(model, x, widths, GroupMagnitudeImportance(p=1))
    assert len(heads.items_of(kept[heads.name])) == 2
    pruned = prune_channels(model, x, kept)
    assert pruned.blocks[0].attn.num_heads == 2 and pruned(x).shape == (2, 5)
