"""Every evaluator gives the naive losses, and the same plans, on random small networks.

The networks are drawn by hypothesis from residual adds, concatenations, depthwise and
grouped convolutions, a module applied twice, and a linear head, with random weights and
labels. Batched losses must equal the naive ones within ``RTOL`` (measured agreement on a CPU
is about 1e-7 to 1e-6 relative, docs/RESULTS.md); whole plans must be identical, since
``PruneConfig.tie`` (1e-5) turns every closer pair of candidates into a tie broken by index.
"""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from gfsprune import Macs, PruneConfig, prune
from gfsprune.scoring import BatchedEvaluator, NaiveEvaluator
from gfsprune.surgery import Masks, build_graph, find_layers
from tests.nets import randomize_norms

RTOL = 1e-5
KINDS = ("residual", "concat", "depthwise", "grouped", "shared")


class RandomNet(nn.Module):
    """A stem, then one block per entry of ``kinds``, then a linear head."""

    def __init__(self, kinds: list[str], width: int, classes: int = 3) -> None:
        super().__init__()
        self.kinds = kinds
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width))
        blocks = []
        for kind in kinds:
            if kind == "residual":
                block = nn.ModuleList(
                    [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)]
                )
            elif kind == "concat":
                block = nn.ModuleList([nn.Conv2d(width, 2, 1), nn.Conv2d(width + 2, width, 1)])
            elif kind == "depthwise":
                block = nn.ModuleList(
                    [
                        nn.Conv2d(width, width, 3, padding=1, groups=width),
                        nn.BatchNorm2d(width),
                        nn.Conv2d(width, width, 1),
                    ]
                )
            elif kind == "grouped":
                block = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, groups=2)])
            else:  # shared: one convolution applied twice
                block = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1)])
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for kind, block in zip(self.kinds, self.blocks, strict=True):
            if kind == "residual":
                x = torch.relu(block[1](block[0](x)) + x)
            elif kind == "concat":
                x = torch.relu(block[1](torch.cat([x, block[0](x)], 1)))
            elif kind == "depthwise":
                x = torch.relu(block[2](torch.relu(block[1](block[0](x)))))
            elif kind == "grouped":
                x = torch.relu(block[0](x))
            else:
                x = torch.relu(block[0](torch.relu(block[0](x))))
        return self.head(x.mean((2, 3)))


def _networks(kinds: tuple[str, ...]) -> st.SearchStrategy:
    return st.tuples(
        st.lists(st.sampled_from(kinds), min_size=1, max_size=3),
        st.sampled_from([4, 6, 8]),
        st.integers(0, 2**16),
    )


def _build(kinds: list[str], width: int, seed: int):
    torch.manual_seed(seed)
    model = randomize_norms(RandomNet(kinds, width), seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(6, 3, 6, 6, generator=g), torch.randint(0, 3, (6,), generator=g))
        for _ in range(3)
    ]
    return model, data


@settings(max_examples=12, deadline=None, derandomize=True)
@given(_networks(KINDS), st.integers(0, 2**16))
@example(network=(["shared"], 8, 0), draw=0)  # a consumer called twice (issue 15)
def test_batched_losses_equal_naive_losses_on_random_networks(network, draw) -> None:
    model, data = _build(*network)
    x, y = data[0]
    graph = build_graph(model, x[:1])
    layers, _ = find_layers(model, x[:1], graph=graph)
    rng = torch.Generator().manual_seed(draw)
    loss = nn.functional.cross_entropy
    with Masks(model, layers) as masks:
        naive = NaiveEvaluator(model, masks, loss)
        batched = BatchedEvaluator(model, masks, loss, graph=graph)
        for layer in layers:
            random_sets = (torch.rand(5, layer.width, generator=rng) < 0.5).float()
            random_sets[:, 0] = 1.0  # no empty set
            # Forward-selection rows: a shared set plus one channel each (these take the
            # shared-plus-delta path of the first consumer).
            base = random_sets[0].clone()
            base[0] = 0.0
            outside = (base == 0).nonzero().flatten()
            growing = base.repeat(len(outside), 1)
            growing[torch.arange(len(outside)), outside] = 1.0
            for rows in (random_sets, growing):
                rows = rows * layer.width / rows.sum(1, keepdim=True)  # the mean-field rescale
                torch.testing.assert_close(
                    torch.tensor(batched(x, y, layer, rows)),
                    torch.tensor(naive(x, y, layer, rows)),
                    rtol=RTOL,
                    atol=0.0,
                )
            kept = random_sets[0].nonzero().flatten().tolist()
            masks.set(layer, kept, layer.width / len(kept))


# Grouped (not depthwise) convolutions are scored exactly (above) but Torch-Pruning cannot yet
# remove their channels (issue 10), so whole plans are checked on the other blocks.
@settings(max_examples=8, deadline=None, derandomize=True)
@given(_networks(tuple(k for k in KINDS if k != "grouped")))
def test_naive_and_batched_plans_are_identical_on_random_networks(network) -> None:
    model, data = _build(*network)
    plans = {
        evaluator: prune(
            model,
            data,
            data[0][0][:1],
            target=Macs(0.6),
            config=PruneConfig(objective="loss", candidates=3, evaluator=evaluator),
            progress=False,
        ).plan
        for evaluator in ("naive", "batched")
    }
    assert [p.kept for p in plans["naive"]] == [p.kept for p in plans["batched"]]


class _OwnForward(nn.Module):
    """A block that sets its forward per instance in ``__init__`` (as timm's FasterNet
    does): the batched evaluator patches and restores it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.forward = self.forward_residual

    def forward_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_a_module_with_its_own_instance_forward_keeps_it() -> None:
    torch.manual_seed(0)
    block = _OwnForward(6)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), block, nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)
    )
    x = torch.randn(4, 3, 8, 8)
    model(x)  # the lazy layer takes its shape
    data = [(x, torch.randint(0, 4, (4,)))]
    plans = {
        evaluator: prune(
            model,
            data,
            x[:1],
            target=Macs(0.6),
            config=PruneConfig(objective="loss", candidates=3, evaluator=evaluator),
            progress=False,
        ).plan
        for evaluator in ("naive", "batched")
    }
    assert [p.kept for p in plans["naive"]] == [p.kept for p in plans["batched"]]
    assert vars(block)["forward"] == block.forward_residual  # the user's forward is back
