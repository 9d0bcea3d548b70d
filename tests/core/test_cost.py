"""The cost-model protocol: a new cost (here, kept channels) plugs in from one class and a
budget that names its metric; the result records every metric it measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gfsprune import PruneConfig, prune
from gfsprune.core.cost import CostModel
from gfsprune.errors import ConfigError
from gfsprune.targets import Budget, Macs
from tests.nets import Chain, randomize_norms


class KeptChannels(CostModel):
    """The number of channels the pruned layers keep (a toy cost)."""

    def __init__(self, model: nn.Module, example_inputs: object, layers) -> None:
        super().__init__(layers)
        self.names = [layer.name for layer in layers]

    def predict_flat(self, flat: np.ndarray) -> dict[str, float]:
        return {"channels": float(flat.sum())}

    def measure(self, model: nn.Module, example_inputs: object) -> dict[str, float]:
        modules = dict(model.named_modules())
        return {"channels": float(sum(modules[n].out_channels for n in self.names))}

    def neighbours(self) -> list[set[int]]:
        return [set() for _ in self.widths]  # additive: no layer changes another's saving


class Channels(Budget):
    """Keep ``ratio`` of the pruned layers' channels."""

    metric = "channels"

    def cost_model(self):
        return KeptChannels


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 2, 5, 5, generator=g), torch.randint(0, 3, (8,), generator=g))]


@pytest.mark.parametrize("allocator", ["uniform", "curves"])
def test_a_budget_on_a_new_cost_model_is_met_and_recorded(allocator: str) -> None:
    torch.manual_seed(0)
    model, data = randomize_norms(Chain(width=10)), _data()
    config = PruneConfig(candidates=3, allocator=allocator)
    result = prune(model, data, data[0][0][:1], target=Channels(0.4), config=config, progress=False)
    assert sum(len(p.kept) for p in result.plan) == 8  # 40% of 2 x 10 channels
    assert result.metrics_before["channels"] == 20
    assert result.metrics_after["channels"] == 8
    assert result.macs_after < result.macs_before  # MACs and parameters are still counted


def test_a_budget_the_cost_model_does_not_predict_is_refused() -> None:
    class MacsOnChannels(Macs):
        def cost_model(self):
            return KeptChannels

    model, data = randomize_norms(Chain(width=4)), _data()
    with pytest.raises(ConfigError, match="counts 'macs'.*predicts \\['channels'\\]"):
        prune(model, data, data[0][0][:1], target=MacsOnChannels(0.5), progress=False)
