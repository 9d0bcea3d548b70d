"""The cost model predicts real pruned costs; widths meet budgets; unreachable ones are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.nets import Chain, Coupled, randomize_norms

from gfsprune.core.budget import CostModel, allocate_widths, check_reachable
from gfsprune.core.counting import count
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers, prune_channels
from gfsprune.targets import Macs, Params


@pytest.mark.parametrize("seed", range(4))
def test_prediction_equals_the_count_of_the_pruned_model(seed: int) -> None:
    torch.manual_seed(seed)
    model, x = randomize_norms(Coupled()), torch.randn(1, 3, 4, 4)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    rng = np.random.default_rng(seed)
    kept = {}
    for layer in layers:
        n = int(rng.integers(1, layer.width + 1))
        kept[layer.name] = sorted(rng.choice(layer.width, n, replace=False).tolist())
    for layer in layers:  # every concatenated part keeps at least one channel
        for segment in layer.segments:
            if not set(segment) & set(kept[layer.name]):
                kept[layer.name].append(segment[0])
    keep = [np.isin(np.arange(layer.width), kept[layer.name]).astype(float) for layer in layers]
    assert cost.predict(keep) == pytest.approx(count(prune_channels(model, x, kept), x))
    assert (cost.full_macs, cost.full_params) == pytest.approx(count(model, x))


@pytest.mark.parametrize("target", [Macs(0.5), Params(0.3), Macs(0.8)])
def test_allocated_widths_meet_the_budget(target) -> None:
    model, x = randomize_norms(Chain(width=64)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    widths = allocate_widths(cost, target)
    kept = {layer.name: list(range(w)) for layer, w in zip(layers, widths, strict=True)}
    macs, params = count(prune_channels(model, x, kept), x)
    got = macs / cost.full_macs if isinstance(target, Macs) else params / cost.full_params
    assert got == pytest.approx(target.ratio, rel=0.02)
    assert max(widths) - min(widths) <= 2  # uniform up to the final single-channel moves


def test_selected_layers_are_held_fixed() -> None:
    model, x = randomize_norms(Chain(width=40)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    widths = allocate_widths(cost, Macs(0.5), selected={0: list(range(35))})
    # MACs ~ 2*w0 + w0*w1 (in units of 9*36): 70 + 35 * w1 = 0.5 * (80 + 1600) gives w1 = 22
    assert widths == [35, 22]


def test_unreachable_budget_names_the_smallest_ratio() -> None:
    model, x = randomize_norms(Chain(width=8)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    smallest = cost.ratio([np.full(8, 1 / 8)] * 2, Macs(0.5))
    with pytest.raises(ConfigError, match=f"at least {smallest:.4f}"):
        check_reachable(cost, Macs(smallest / 2))
    check_reachable(cost, Macs(smallest * 1.01))
