"""The width planner: loss curves are measured only for a budget whose allocator reads them;
fixed widths and tolerances never measure any; a cost model's estimates are measured on the
narrowest model and on planned ones until one is close to the budget."""

from __future__ import annotations

import pytest
import torch

from gfsprune import Macs, PruneConfig, Tolerance, Widths, prune
from gfsprune.core import prune as prune_module
from gfsprune.core.allocate import Uniform
from gfsprune.core.compute_cost import ComputeCost
from gfsprune.core.planner import CLOSE, LOOPS, REFUSE, WidthPlanner
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers
from tests.nets import Chain, randomize_norms


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 2, 5, 5, generator=g), torch.randint(0, 3, (8,), generator=g))]


@pytest.fixture
def measured(monkeypatch) -> list[str]:
    """The layers whose loss curve a run measures."""
    names: list[str] = []
    real = prune_module.measure_curve

    def counting(objective, **options):
        names.append(objective.layer.name)
        return real(objective, **options)

    monkeypatch.setattr(prune_module, "measure_curve", counting)
    return names


@pytest.mark.parametrize(
    ("target", "allocator", "curves"),
    [
        (Macs(0.5), "curves", ["c1", "c2"]),
        (Macs(0.5), "uniform", []),
        (Widths({"c1": 3}), "curves", []),
        (Tolerance(0.1), "curves", []),
    ],
)
def test_curves_are_measured_only_where_a_budget_needs_them(
    measured, target, allocator, curves
) -> None:
    torch.manual_seed(0)
    model, data = randomize_norms(Chain(width=6)), _data()
    config = PruneConfig(candidates=2, allocator=allocator)
    prune(model, data, data[0][0][:1], target=target, config=config, progress=False)
    assert measured == curves


def test_round_to_with_fixed_widths_is_refused() -> None:
    model, data = randomize_norms(Chain(width=6)), _data()
    with pytest.raises(ConfigError, match="Widths widths are taken as given"):
        prune(
            model,
            data,
            data[0][0][:1],
            target=Widths({"c1": 4}),
            config=PruneConfig(round_to=2),
            progress=False,
        )


class _Measured(ComputeCost):
    """MACs as estimates: each calibration "measures" the next of ``shares``."""

    def __init__(self, *args, shares: list[float]) -> None:
        super().__init__(*args)
        self.answers, self.timed = shares, []

    def calibrate(self, widths):
        self.timed.append(list(widths))
        return {"macs": self.answers[len(self.timed) - 1]}


def _planner(shares: list[float]) -> tuple[WidthPlanner, _Measured]:
    model, x = Chain(width=6), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    cost = _Measured(model, x, layers, shares=shares)
    planner = WidthPlanner(layers, cost, Uniform(), round_to=1)
    planner.start(Macs(0.5))
    assert cost.timed == [[1, 1]]  # the narrowest, before the budget is checked
    return planner, cost


@pytest.mark.parametrize(
    ("shares", "timed"),
    [
        ([0.1, 0.5 * (1 + CLOSE / 2)], 2),  # the first plan is close enough
        ([0.1, *[0.4] * LOOPS], 1 + LOOPS),  # never close: LOOPS planned models at most
    ],
)
def test_planned_models_are_measured_until_one_is_close(shares, timed) -> None:
    planner, cost = _planner(shares)
    widths = planner.allocate(Macs(0.5), {})
    planner.allocate(Macs(0.5), {0: list(range(widths[0]))})  # later plans measure nothing
    assert len(cost.timed) == timed and cost.timed[1] == widths


class _Wavering(_Measured):
    """Each calibration moves the prediction, so that the planner plans other widths."""

    def calibrate(self, widths):
        answer = super().calibrate(widths)
        self._bias = getattr(self, "_bias", 1.0) * 1.3
        return answer

    def predict_flat(self, flat):
        return {k: v * getattr(self, "_bias", 1.0) for k, v in super().predict_flat(flat).items()}


def _measured_plans(planner: WidthPlanner, cost: _Measured) -> tuple[list[int], dict]:
    widths = planner.allocate(Macs(0.5), {})
    return widths, {tuple(w): s for w, s in zip(cost.timed[1:], cost.answers[1:], strict=False)}


def test_without_a_close_plan_the_largest_within_the_budget_is_kept() -> None:
    shares = [0.1, 0.3, 0.45, 0.56, 0.4, 0.6][: 1 + LOOPS]
    planner, cost = _planner(shares)
    cost.__class__ = _Wavering
    widths, plans = _measured_plans(planner, cost)
    assert len(set(plans)) > 1, "the fixture must make the planner try several plans"
    assert plans[tuple(widths)] == max(s for s in plans.values() if s <= 0.5 * (1 + CLOSE))
    # the selection following the kept plan gets it again, not a re-plan
    assert planner.allocate(Macs(0.5), {0: list(range(widths[0]))}) == widths


def test_a_budget_no_measured_plan_comes_near_is_refused_with_the_cheapest() -> None:
    cheapest = 0.5 * (1 + REFUSE) + 0.05
    planner, cost = _planner([0.1, 0.8, cheapest, *[0.9] * LOOPS])
    cost.__class__ = _Wavering
    with pytest.raises(ConfigError, match=f"ask for a ratio of at least {cheapest:.3f}"):
        planner.allocate(Macs(0.5), {})


def test_a_budget_slightly_out_of_reach_keeps_the_cheapest_plan_with_a_warning(caplog) -> None:
    cheapest = 0.5 * (1 + (CLOSE + REFUSE) / 2)
    planner, cost = _planner([0.1, 0.8, cheapest, *[0.9] * LOOPS])
    cost.__class__ = _Wavering
    widths, plans = _measured_plans(planner, cost)
    assert plans[tuple(widths)] == cheapest
    assert "keeping the cheapest" in caplog.text
