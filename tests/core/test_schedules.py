"""Schedules: the fast one at its exact limits is the exact one, it is deterministic, and its
first-order screen ranks channels as finite differences do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune import Macs, PruneConfig, Tolerance, prune
from gfsprune.core.schedules import Exact, Fast
from gfsprune.errors import ConfigError
from gfsprune.scoring import BatchedEvaluator, NaiveEvaluator
from gfsprune.surgery import Masks, find_layers
from tests.nets import Chain, randomize_norms


def _data(batches: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 2, 5, 5, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(batches)
    ]


@pytest.fixture
def chain():
    torch.manual_seed(0)
    return randomize_norms(Chain(width=24)), _data()


def _plan(model, data, **options) -> list[list[int]]:
    config = PruneConfig(objective="loss", candidates=5, **options)
    result = prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    return [p.kept for p in result.plan]


def test_fast_at_its_exact_limits_is_the_exact_schedule(chain) -> None:
    model, data = chain
    exact = _plan(model, data, schedule="exact")
    assert _plan(model, data, schedule=Fast(growth=0, screen=None)) == exact
    assert _plan(model, data) == exact  # the default
    # an exact warm-up as long as the widest kept layer leaves nothing to the fast steps
    assert _plan(model, data, schedule=Fast(warmup=24, exact_warmup=True)) == exact


def test_exact_warmup_scores_random_candidates_then_screens() -> None:
    fast = Fast(screen=16, warmup=8, exact_warmup=True)
    assert [fast.screened(k) for k in (0, 7, 8, 40)] == [None, None, 16, 20]
    assert Fast(screen=16, warmup=8).screened(0) == 16


def test_fast_is_deterministic_and_meets_the_widths(chain) -> None:
    model, data = chain
    fast = _plan(model, data, schedule="fast")
    assert fast == _plan(model, data, schedule=Fast())
    # The batched evaluator reuses the screen's prefix for the step's scores; the naive one
    # computes everything afresh.
    assert fast == _plan(model, data, schedule="fast", evaluator="naive")
    assert [len(k) for k in fast] == [len(k) for k in _plan(model, data)]
    assert all(len(set(k)) == len(k) for k in fast)
    for objective in ("loss", "reconstruction"):
        tolerant = prune(
            model,
            data,
            data[0][0][:1],
            target=Tolerance(0.05),
            config=PruneConfig(schedule="fast", objective=objective),
            progress=False,
        )
        assert all(len(p.kept) >= 1 for p in tolerant.plan)


def test_the_first_order_screen_ranks_like_finite_differences(chain) -> None:
    model, data = chain
    x, y = data[0]
    layers, _ = find_layers(model, x[:1])
    layer = layers[1]
    keep = torch.zeros(layer.width)
    keep[[0, 3, 5, 8]] = layer.width / 4  # a partly selected layer, rescaled
    with Masks(model, layers) as masks:
        evaluator = NaiveEvaluator(model, masks, nn.functional.cross_entropy)
        grad = evaluator.gradient(x, y, layer, keep)
        eps = 1e-2
        rows = keep.repeat(layer.width + 1, 1)
        rows[1:] += eps * torch.eye(layer.width)
        losses = torch.tensor(evaluator(x, y, layer, rows), dtype=torch.float64)
    finite = (losses[1:] - losses[0]) / eps
    torch.testing.assert_close(grad.double(), finite, rtol=0.05, atol=1e-3)
    assert torch.equal(grad.argsort()[:6], finite.argsort()[:6])


def test_the_batched_gradient_equals_the_whole_networks(chain) -> None:
    model, data = chain
    x, y = data[0]
    layers, _ = find_layers(model, x[:1])
    with Masks(model, layers) as masks:
        masks.set(layers[0], [0, 2, 4], 2.0)  # an earlier layer already pruned
        naive = NaiveEvaluator(model, masks, nn.functional.cross_entropy)
        batched = BatchedEvaluator(model, masks, nn.functional.cross_entropy)
        for layer in layers[1:]:
            keep = torch.zeros(layer.width)
            keep[[1, 3, 6]] = layer.width / 3
            suffix_only = batched.gradient(x, y, layer, keep)
            torch.testing.assert_close(suffix_only, naive.gradient(x, y, layer, keep))


def test_warmup_picks_one_per_step_then_grows() -> None:
    fast = Fast(growth=0.25, warmup=8)
    assert [fast.picks(k) for k in (0, 7, 8, 40)] == [1, 1, 2, 10]
    assert Fast(warmup=0).picks(8) == 2 and Fast().picks(8) == 1


def test_schedule_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'growth' parameter of Fast"):
        Fast(growth=-1)
    with pytest.raises(ConfigError, match="'screen' parameter of Fast"):
        Fast(screen=0)
    with pytest.raises(ConfigError, match="'warmup' parameter of Fast"):
        Fast(warmup=-1)
    with pytest.raises(ConfigError, match="'exact_warmup' parameter of Fast"):
        Fast(exact_warmup=1)
    with pytest.raises(ConfigError, match="'schedule' option of PruneConfig must be one of"):
        PruneConfig(schedule="quick")
    with pytest.raises(ConfigError, match="'backward' strategy runs only the exact schedule"):
        PruneConfig(strategy="backward", schedule="fast")
    assert isinstance(PruneConfig(strategy="backward", schedule="exact").make_schedule(), Exact)
