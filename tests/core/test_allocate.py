"""Width allocators meet budgets; a new allocator plugs in from one class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gfsprune import PruneConfig, models, prune
from gfsprune.core.allocate import (
    Curves,
    Uniform,
    WidthAllocator,
    allowed_widths,
    check_reachable,
)
from gfsprune.core.compute_cost import ComputeCost
from gfsprune.core.counting import count
from gfsprune.core.curves import LossCurve
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers, prune_channels
from gfsprune.targets import Macs, Params, Tolerance
from tests.nets import Chain, randomize_norms


@pytest.mark.parametrize("target", [Macs(0.5), Params(0.3), Macs(0.8)])
def test_allocated_widths_meet_the_budget(target) -> None:
    model, x = randomize_norms(Chain(width=64)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    widths = Uniform().allocate(cost, target, {})
    kept = {layer.name: list(range(w)) for layer, w in zip(layers, widths, strict=True)}
    macs, params = count(prune_channels(model, x, kept), x)
    got = macs / cost.full["macs"] if isinstance(target, Macs) else params / cost.full["params"]
    assert got == pytest.approx(target.ratio, rel=0.02)
    assert max(widths) - min(widths) <= 2  # uniform up to the final single-channel moves


def test_selected_layers_are_held_fixed() -> None:
    model, x = randomize_norms(Chain(width=40)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    widths = Uniform().allocate(cost, Macs(0.5), {0: list(range(35))})
    # MACs ~ 2*w0 + w0*w1 (in units of 9*36): 70 + 35 * w1 = 0.5 * (80 + 1600) gives w1 = 22
    assert widths == [35, 22]


def _curve(full: int, steepness: float) -> LossCurve:
    """A loss falling as ``steepness / width`` towards full width."""
    widths = np.arange(1, full + 1, dtype=float)
    return LossCurve(widths, 1.0 + steepness * (1 / widths - 1 / full))


@pytest.mark.parametrize("steep", [0, 1])
def test_curves_give_the_steeper_layer_more_width_and_meet_the_budget(steep: int) -> None:
    model, x = randomize_norms(Chain(width=32)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    curves = [_curve(32, 1.0), _curve(32, 1.0)]
    curves[steep] = _curve(32, 8.0)
    widths = Curves().allocate(cost, Macs(0.5), {}, curves=curves)
    uniform = Uniform().allocate(cost, Macs(0.5), {})
    assert widths[steep] > uniform[steep] and widths[1 - steep] < uniform[1 - steep]
    kept = {layer.name: list(range(w)) for layer, w in zip(layers, widths, strict=True)}
    macs, _ = count(prune_channels(model, x, kept), x)
    assert macs / cost.full["macs"] == pytest.approx(0.5, rel=0.02)
    # After the first layer is pruned, the second takes what the budget leaves.
    narrower = Curves().allocate(cost, Macs(0.5), {0: list(range(widths[0] - 3))}, curves=curves)
    assert narrower[0] == widths[0] - 3 and narrower[1] >= widths[1]
    with pytest.raises(ConfigError, match="'curves' allocator needs one loss curve per layer"):
        Curves().allocate(cost, Macs(0.5), {}, curves=curves[:1])
    with pytest.raises(ConfigError, match="'steps' parameter of Curves"):
        Curves(steps=0)


def test_a_loss_curve_is_read_non_increasing_in_the_width() -> None:
    curve = LossCurve(np.array([1.0, 2.0, 4.0]), np.array([3.0, 1.0, 2.0]))
    assert curve.at(np.array([1.0, 1.5, 3.0, 4.0, 8.0])).tolist() == [3.0, 2.0, 1.0, 1.0, 1.0]


def test_the_curves_allocator_through_prune_meets_the_budget_and_repeats() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(Chain(width=24)), torch.randn(8, 2, 6, 6)
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(6)
    ]
    config = PruneConfig(allocator="curves", schedule="fast", candidates=4)
    result = prune(model, data, x[:1], target=Macs(0.5), config=config, progress=False)
    assert result.macs_ratio == pytest.approx(0.5, rel=0.02)
    again = prune(model, data, x[:1], target=Macs(0.5), config=config, progress=False)
    assert [p.kept for p in again.plan] == [p.kept for p in result.plan]


class _FirstLayerWide(WidthAllocator):
    """A test allocator: the first layer at full width, the rest as uniform would have them."""

    name = "first-wide"

    def allocate(self, cost, budget, selected, *, round_to=1):
        widths = Uniform().allocate(cost, budget, selected, round_to=round_to)
        return [int(cost.widths[0]), *widths[1:]]


def test_a_new_allocator_is_one_class_passed_in_the_config() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(Chain(width=8)), torch.randn(4, 2, 6, 6)
    data = [(x, torch.randint(0, 3, (4,)))]
    config = PruneConfig(allocator=_FirstLayerWide(), candidates=2)
    result = prune(model, data, x[:1], target=Macs(0.6), config=config, progress=False)
    assert len(result.plan[0].kept) == 8 and len(result.plan[1].kept) < 8
    uniform = prune(model, data, x[:1], target=Macs(0.6), progress=False)
    assert len(uniform.plan[0].kept) < 8


@pytest.mark.parametrize("target", [Macs(0.5), Params(0.35)])
def test_round_to_gives_multiples_and_still_meets_the_budget(target) -> None:
    model, x = randomize_norms(Chain(width=64)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    widths = Uniform().allocate(cost, target, {}, round_to=8)
    assert all(w % 8 == 0 for w in widths)
    kept = {layer.name: list(range(w)) for layer, w in zip(layers, widths, strict=True)}
    macs, params = count(prune_channels(model, x, kept), x)
    got = {"macs": macs, "params": params}[target.metric] / cost.full[target.metric]

    # Steps of 8 of 64 channels are coarse: no single step of one layer gets closer.
    def error(w: list[int]) -> float:
        return abs(cost.ratio([np.full(64, v / 64) for v in w], target.metric) - target.ratio)

    assert error(widths) == pytest.approx(abs(got - target.ratio), abs=1e-9)
    for i in range(2):
        for step in (-8, 8):
            moved = list(widths)
            moved[i] += step
            if 8 <= moved[i] <= 64:
                assert error(widths) <= error(moved)


def test_round_to_through_prune_for_budgets_and_tolerance() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(Chain(width=20)), torch.randn(8, 2, 6, 6)
    data = [(x, torch.randint(0, 3, (8,)))]
    config = PruneConfig(round_to=8, candidates=4)
    result = prune(model, data, x[:1], target=Macs(0.45), config=config, progress=False)
    assert all(len(p.kept) in (8, 16, 20) for p in result.plan)
    assert result.macs_ratio == pytest.approx(0.45, abs=0.1)  # steps of 8 of 20 are coarse
    tolerant = prune(model, data, x[:1], target=Tolerance(0.5), config=config, progress=False)
    assert all(len(p.kept) in (8, 16, 20) for p in tolerant.plan)


def test_round_to_larger_than_a_layer_leaves_it_whole_or_refuses_the_budget() -> None:
    model, x = randomize_norms(Chain(width=6)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    with pytest.raises(ConfigError, match="round_to=8 leaves nothing to prune.*widest has 6"):
        check_reachable(cost, Macs(0.5), round_to=8)
    with pytest.raises(ConfigError, match="cannot be met to the nearest step.*at most 0\\."):
        check_reachable(cost, Macs(0.9), round_to=4)
    assert allowed_widths(6, 8).tolist() == [6]


@pytest.mark.parametrize("round_to", [1, 8])
def test_uniform_spreads_the_budget_correction_over_the_layers(round_to: int) -> None:
    # resnet20 at 25% MACs: the nearest widths miss the budget, and the single steps that
    # correct it go one per layer, so layers of the same full width stay within one step
    torch.manual_seed(0)
    model, x = models.get("resnet20", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    widths = Uniform().allocate(cost, Macs(0.25), {}, round_to=round_to)
    for full in set(cost.widths.tolist()):
        same = [w for w, f in zip(widths, cost.widths, strict=True) if f == full]
        assert max(same) - min(same) <= round_to, (full, same)


class _NarrowThenWide(nn.Module):
    """A 16-channel convolution on a large map, then 64-channel ones on a small map: with
    ``round_to=8`` the narrow layer may only be 8 or 16 wide, the wide ones move in eighths."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(3, 16, 3, padding=1)
        self.wide = nn.Sequential(
            nn.Conv2d(16, 64, 3, stride=4, padding=1),
            *(nn.Conv2d(64, 64, 3, padding=1) for _ in range(3)),
        )
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.wide(torch.relu(self.narrow(x))).mean((2, 3)))


@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.6])
def test_a_coarse_layer_keeps_its_nearest_width_when_finer_steps_reach_the_budget(ratio) -> None:
    # The budget correction takes steps that stay on the near side of the budget first: the
    # 16-channel layer is not pushed a whole half of its width past its share (and the wide
    # layers cut back to pay for it) while the wide layers' eighths can fill the gap.
    model, x = _NarrowThenWide(), torch.randn(1, 3, 32, 32)
    layers, _ = find_layers(model, x)
    cost = ComputeCost(model, x, layers)
    shares = np.array(Uniform().allocate(cost, Macs(ratio), {})) / cost.widths
    widths = Uniform().allocate(cost, Macs(ratio), {}, round_to=8)
    grid = allowed_widths(16, 8)
    nearest = grid[np.abs(grid - 16 * shares[0]).argmin()]
    assert widths[0] == nearest

    def ratio_at(w: list[int]) -> float:
        return cost.ratio(
            [np.full(int(f), v / f) for v, f in zip(w, cost.widths, strict=True)], "macs"
        )

    # within the least one eighth of one wide layer changes the ratio
    finest = min(
        abs(ratio_at(widths) - ratio_at([*widths[:i], widths[i] - 8, *widths[i + 1 :]]))
        for i in range(1, len(widths))
    )
    assert abs(ratio_at(widths) - ratio) <= finest
