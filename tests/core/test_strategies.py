"""Strategies: forward and backward choose by loss; a new strategy plugs in from one class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfsprune import Macs, PruneConfig, Tolerance, Widths, prune
from gfsprune.core.strategies import LayerChoice, LayerSearch, Strategy
from gfsprune.errors import ConfigError
from gfsprune.targets import Goal
from tests.nets import Chain, randomize_norms


def _data(batches: int = 3):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 2, 5, 5, generator=g), torch.randint(0, 3, (16,), generator=g))
        for _ in range(batches)
    ]


class _EveryOther(Strategy):
    """A test strategy: the even channels first, then the odd ones, to the goal's width;
    scores each pick once so its trace has one loss per pick."""

    name = "every-other"
    needs_width = True

    def choose(self, search: LayerSearch, goal: Goal) -> LayerChoice:
        order = [*range(0, search.layer.width, 2), *range(1, search.layer.width, 2)]
        kept = order[: goal.width]
        losses = [search.objective.score([kept[: i + 1]])[0] for i in range(len(kept))]
        return LayerChoice(kept, losses)


@pytest.fixture
def chain():
    torch.manual_seed(0)
    return randomize_norms(Chain(width=8)), _data()


def test_a_new_strategy_is_one_class_passed_in_the_config(chain) -> None:
    model, data = chain
    config = PruneConfig(strategy=_EveryOther(), objective="loss")  # the mean-field rescale
    target = Widths({"c1": 3, "c2": 5})
    result = prune(model, data, data[0][0][:1], target=target, config=config, progress=False)
    assert [p.kept for p in result.plan] == [[0, 2, 4], [0, 2, 4, 6, 1]]
    assert [len(log.losses) for log in result.layers] == [3, 5]
    assert [p.scale for p in result.plan] == [8 / 3, 8 / 5]
    with pytest.raises(ConfigError, match="'every-other' strategy needs a size target"):
        prune(model, data, data[0][0][:1], target=Tolerance(0.1), config=config, progress=False)


def test_forward_keeps_channels_in_pick_order_and_backward_sorted(chain) -> None:
    model, data = chain
    forward = prune(
        model, data, data[0][0][:1], target=Macs(0.5), config=PruneConfig(), progress=False
    )
    backward = prune(
        model,
        data,
        data[0][0][:1],
        target=Widths({p.name: len(p.kept) for p in forward.plan}),
        config=PruneConfig(strategy="backward"),
        progress=False,
    )
    for f, b in zip(forward.plan, backward.plan, strict=True):
        assert len(f.kept) == len(b.kept) and b.kept == sorted(b.kept)
        assert len(set(f.kept)) == len(f.kept)
    # The forward trace records the pick order: its losses are those of growing prefixes.
    assert any(f.kept != sorted(f.kept) for f in forward.plan)
    assert all(np.isfinite(log.losses).all() for log in forward.layers)
