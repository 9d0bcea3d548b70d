"""The batched, prefix-cached evaluator returns the naive evaluator's losses."""

from __future__ import annotations

import pytest
import torch
from nets import Coupled, randomize_norms
from torch import nn

from gfsprune.evaluate import make_evaluator
from gfsprune.surgery import Masks, find_layers


class SharedRelu(nn.Module):
    """One ReLU module called before and after the layers' consumers, and a nested block."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.a, self.bn_a = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b, self.bn_b = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.bn_a(self.a(x))) + x
        x = self.act(self.bn_b(self.b(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("net", "shape"), [(SharedRelu, (2, 5, 5)), (Coupled, (3, 4, 4))], ids=["shared", "coupled"]
)
def test_batched_losses_equal_naive_losses_for_every_layer(net, shape) -> None:
    torch.manual_seed(0)
    model = randomize_norms(net())
    x, y = torch.randn(6, *shape), torch.randint(0, 3, (6,))
    layers, _ = find_layers(model, x[:1])
    loss = nn.functional.cross_entropy
    with Masks(model, layers) as masks:
        masks.set(layers[0], [0, 1], 3.0)  # an earlier layer already pruned
        naive = make_evaluator("naive", model, masks, loss)
        batched = make_evaluator("batched", model, masks, loss)
        batched.max_batch = 12  # forces several chunks of 2 candidates
        for layer in layers:
            keep = (torch.rand(5, layer.width) > 0.5).float() * 2.0
            keep[:, 0] = 1.0
            assert batched(x, y, layer, keep) == pytest.approx(naive(x, y, layer, keep), rel=1e-5)


def test_prefix_cache_leaves_the_model_unpatched() -> None:
    torch.manual_seed(0)
    model = randomize_norms(SharedRelu())
    x, y = torch.randn(4, 2, 5, 5), torch.randint(0, 3, (4,))
    layers, _ = find_layers(model, x[:1])
    with Masks(model, layers) as masks:
        make_evaluator("batched", model, masks, nn.functional.cross_entropy)(
            x, y, layers[-1], torch.ones(2, layers[-1].width)
        )
    assert all("forward" not in vars(m) for m in model.modules())
