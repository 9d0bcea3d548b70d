"""The cost model predicts real pruned costs; budgets no widths can meet are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfsprune.core.allocate import check_reachable
from gfsprune.core.cost import CostModel
from gfsprune.core.counting import count
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers, prune_channels
from gfsprune.targets import Macs
from tests.nets import Chain, Coupled, randomize_norms


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


def test_unreachable_budget_names_the_smallest_ratio() -> None:
    model, x = randomize_norms(Chain(width=8)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    smallest = cost.ratio([np.full(8, 1 / 8)] * 2, Macs(0.5))
    with pytest.raises(ConfigError, match=f"at least {smallest:.4f}"):
        check_reachable(cost, Macs(smallest / 2))
    check_reachable(cost, Macs(smallest * 1.01))


def test_a_budget_whose_nearest_width_choice_is_the_full_model_is_refused() -> None:
    model, x = randomize_norms(Chain(width=4)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    largest = max(
        cost.ratio([np.array([0.0, 1, 1, 1]), np.ones(4)], Macs(0.5)),
        cost.ratio([np.ones(4), np.array([0.0, 1, 1, 1])], Macs(0.5)),
    )
    with pytest.raises(ConfigError, match=f"at most {largest:.4f}"):
        check_reachable(cost, Macs(0.99))
    check_reachable(cost, Macs(largest))  # one channel removed meets it exactly
