"""The objective protocol: a new objective (here, a layer-local one: the weight norms of the
layer's producer, gathered before its selection) plugs in from one class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

from gfsprune import Macs, PruneConfig, Tolerance, Widths, prune
from gfsprune.core.allocate import Curves
from gfsprune.core.schedules import Exact
from gfsprune.errors import ConfigError
from gfsprune.scoring import BoundObjective, LayerObjective, Objective, SelectionRun
from tests.nets import Chain, randomize_norms


class _LayerNorms(LayerObjective):
    def __init__(self, layer, norms: torch.Tensor) -> None:
        self.layer, self.norms = layer, norms

    def score(self, sets):
        return [-float(self.norms[list(self.layer.channels(s))].sum()) for s in sets]

    def held_out(self, items):
        return self.score([items])[0]

    def scale(self, channels):
        return 1.0


class _BoundNorms(BoundObjective):
    def __init__(self, run: SelectionRun, log: list) -> None:
        self.run, self.log = run, log

    def layer(self, layer, *, draw, held_out):
        # Gathered before the layer's selection, from the network pruned so far.
        weight = self.run.model.get_submodule(layer.producers[0].name).weight
        self.log.append(("layer", layer.name))
        return _LayerNorms(layer, weight.detach().flatten(1).abs().sum(1))

    def after(self, layer):
        self.log.append(("after", layer.name))


@dataclass(frozen=True)
class Norms(Objective):
    """Keep the channels whose producer weights have the largest L1 norms."""

    name: ClassVar[str] = "norms"
    log: list = field(default_factory=list, compare=False)

    def bind(self, run):
        return _BoundNorms(run, self.log)


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 2, 5, 5, generator=g), torch.randint(0, 3, (8,), generator=g))]


@pytest.fixture
def chain():
    torch.manual_seed(0)
    return randomize_norms(Chain(width=8)), _data()


def test_a_new_objective_plugs_in_from_one_class(chain) -> None:
    model, data = chain
    objective = Norms()
    config = PruneConfig(objective=objective, candidates=None)
    target = Widths({"c1": 3, "c2": 5})
    result = prune(model, data, data[0][0][:1], target=target, config=config, progress=False)
    for plan, conv in zip(result.plan, (model.c1, model.c2), strict=True):
        norms = conv.weight.detach().flatten(1).abs().sum(1)
        assert plan.kept == norms.argsort(descending=True)[: len(plan.kept)].tolist()
        assert plan.scale == 1.0
    assert objective.log == [("layer", "c1"), ("after", "c1"), ("layer", "c2"), ("after", "c2")]


def test_its_held_out_value_drives_tolerance_and_curves(chain) -> None:
    model, data = chain
    config = PruneConfig(objective=Norms(), candidates=None)
    # The value falls with every added channel, never within 0 of the full width's early.
    result = prune(
        model, data, data[0][0][:1], target=Tolerance(0.0), config=config, progress=False
    )
    assert [len(p.kept) for p in result.plan] == [8, 8]
    # The curves pass needs no screen when its schedule says so.
    config = PruneConfig(objective=Norms(), allocator=Curves(schedule=Exact()))
    result = prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    assert result.macs_ratio == pytest.approx(0.5, abs=0.05)


def test_an_objective_without_a_screen_refuses_the_fast_schedule(chain) -> None:
    model, data = chain
    config = PruneConfig(objective=Norms(), schedule="fast")
    with pytest.raises(ConfigError, match="objective has no first-order screen"):
        prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
