"""The cost model predicts real pruned costs; budgets no widths can meet are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfsprune.core.allocate import check_reachable
from gfsprune.core.compute_cost import ComputeCost
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
    cost = ComputeCost(model, x, layers)
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
    predicted = cost.predict(keep)
    assert (predicted["macs"], predicted["params"]) == pytest.approx(
        count(prune_channels(model, x, kept), x)
    )
    assert cost.measure(model, x) == pytest.approx(cost.full)


def test_unreachable_budget_names_the_smallest_ratio() -> None:
    model, x = randomize_norms(Chain(width=8)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    smallest = cost.ratio([np.full(8, 1 / 8)] * 2, "macs")
    with pytest.raises(ConfigError, match=f"at least {smallest:.4f}"):
        check_reachable(cost, Macs(smallest / 2))
    check_reachable(cost, Macs(smallest * 1.01))


def test_a_budget_whose_nearest_width_choice_is_the_full_model_is_refused() -> None:
    model, x = randomize_norms(Chain(width=4)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    largest = max(
        cost.ratio([np.array([0.0, 1, 1, 1]), np.ones(4)], "macs"),
        cost.ratio([np.ones(4), np.array([0.0, 1, 1, 1])], "macs"),
    )
    with pytest.raises(ConfigError, match=f"at most {largest:.4f}"):
        check_reachable(cost, Macs(0.99))
    check_reachable(cost, Macs(largest))  # one channel removed meets it exactly


class _Gram(torch.nn.Module):
    """A container whose own operations (products of its input with itself, no module of
    their own) cost MACs that no channel choice changes."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.norm(x).flatten(2)  # (B, C, HW)
        mixed = (flat.transpose(1, 2) @ flat) @ flat.transpose(1, 2)  # (B, HW, C)
        return mixed.transpose(1, 2).reshape(x.shape)


class _Fixed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gram = _Gram()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.gram(x)).mean((2, 3)))


def test_unreachable_budget_names_the_modules_outside_the_pruned_layers() -> None:
    model, x = _Fixed().eval(), torch.randn(1, 3, 12, 12)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    assert sum(cost.fixed("macs").values()) == pytest.approx(cost.fixed_macs)
    assert next(iter(cost.fixed("macs"))) == "gram"  # its products outweigh the rest
    with pytest.raises(ConfigError, match=r"the largest: gram \d+%.*; ask for a ratio"):
        check_reachable(cost, Macs(0.01))
