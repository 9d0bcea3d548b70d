"""Width allocators meet budgets; a new allocator plugs in from one class."""

from __future__ import annotations

import pytest
import torch

from gfsprune import PruneConfig, prune
from gfsprune.core.allocate import Uniform, WidthAllocator
from gfsprune.core.cost import CostModel
from gfsprune.core.counting import count
from gfsprune.surgery import find_layers, prune_channels
from gfsprune.targets import Macs, Params
from tests.nets import Chain, randomize_norms


@pytest.mark.parametrize("target", [Macs(0.5), Params(0.3), Macs(0.8)])
def test_allocated_widths_meet_the_budget(target) -> None:
    model, x = randomize_norms(Chain(width=64)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    widths = Uniform().allocate(cost, target, {})
    kept = {layer.name: list(range(w)) for layer, w in zip(layers, widths, strict=True)}
    macs, params = count(prune_channels(model, x, kept), x)
    got = macs / cost.full_macs if isinstance(target, Macs) else params / cost.full_params
    assert got == pytest.approx(target.ratio, rel=0.02)
    assert max(widths) - min(widths) <= 2  # uniform up to the final single-channel moves


def test_selected_layers_are_held_fixed() -> None:
    model, x = randomize_norms(Chain(width=40)), torch.randn(1, 2, 6, 6)
    layers, _ = find_layers(model, x)
    cost = CostModel(model, x, layers)
    widths = Uniform().allocate(cost, Macs(0.5), {0: list(range(35))})
    # MACs ~ 2*w0 + w0*w1 (in units of 9*36): 70 + 35 * w1 = 0.5 * (80 + 1600) gives w1 = 22
    assert widths == [35, 22]


class _FirstLayerWide(WidthAllocator):
    """A test allocator: the first layer at full width, the rest as uniform would have them."""

    name = "first-wide"

    def allocate(self, cost, budget, selected):
        widths = Uniform().allocate(cost, budget, selected)
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
