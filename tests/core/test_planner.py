"""The width planner: loss curves are measured only for a budget whose allocator reads them;
fixed widths and tolerances never measure any."""

from __future__ import annotations

import pytest
import torch

from gfsprune import Macs, PruneConfig, Tolerance, Widths, prune
from gfsprune.core import prune as prune_module
from gfsprune.errors import ConfigError
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
