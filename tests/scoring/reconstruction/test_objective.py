"""The reconstruction objective in a pruning run: its choice is the closed-form greedy path
on the statistics of the data's first batches, its refit lowers the consumers' error, the
network loss judges where asked, and the held-out value is the network's loss."""

from __future__ import annotations

import copy

import pytest
import torch

from gfsprune import Macs, PruneConfig, Tolerance, Widths, prune
from gfsprune.core.allocate import Curves
from gfsprune.core.schedules import Exact
from gfsprune.errors import ConfigError
from gfsprune.scoring import Reconstruction
from gfsprune.scoring.loss import _LayerLoss
from gfsprune.scoring.reconstruction import objective as objective_module
from gfsprune.scoring.reconstruction.gram import collect_stats
from gfsprune.scoring.reconstruction.paths import greedy, make_path
from gfsprune.scoring.reconstruction.problem import LayerProblem
from gfsprune.surgery import Masks, find_layers
from tests.nets import Chain, randomize_norms


def _setup(width: int = 12):
    """A Chain and batches labelled by its own predictions (the full width is best)."""
    torch.manual_seed(0)
    model = randomize_norms(Chain(width=width))
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(16, 2, 6, 6, generator=g) for _ in range(2)]
    with torch.no_grad():
        data = [(x, model(x).argmax(1)) for x in inputs]
    return model, data * 3


def _prune(model, data, objective, target=None, **options):
    config = PruneConfig(objective=objective, candidates=None, allocator="uniform")
    target = target or Macs(0.5)
    return prune(
        model, data, data[0][0][:1], target=target, config=config, progress=False, **options
    )


@pytest.mark.parametrize("scale", ["refit", "best", "mean-field", "one"])
def test_the_first_layer_keeps_the_greedy_path_on_the_first_batches(scale: str) -> None:
    model, data = _setup()
    result = _prune(model, data, Reconstruction(scale=scale, batches=2, refit=False))
    assert result.macs_ratio == pytest.approx(0.5, rel=0.05)
    # the same path computed by hand on the unpruned network
    work = copy.deepcopy(model)
    layers, _ = find_layers(work, data[0][0][:1])
    layer = layers[0]
    names = sorted({c.name for c in layer.consumers})
    with Masks(work, layers) as masks:
        stats = collect_stats(work, model, names, data[:2])
        modules = {n: work.get_submodule(n) for n in names}
        factors = {n: masks.input_factors(n) for n in names}
        problem = LayerProblem(layer, stats, modules, factors, {"c2": work.b2})
    path = make_path(problem, scale)
    greedy(path, len(result.plan[0].kept))
    assert result.plan[0].kept == path.selected
    assert result.plan[0].scale == pytest.approx(path.scale)


def test_the_refit_changes_the_consumers_and_reproduces_the_unpruned_network_better() -> None:
    model, data = _setup()
    plain = _prune(model, data, Reconstruction(refit=False))
    refit = _prune(model, data, Reconstruction(refit=True))
    assert refit.plan[0].kept == plain.plan[0].kept  # the later layers see refit inputs
    assert not torch.equal(refit.model.c2.weight, plain.model.c2.weight)
    with torch.no_grad():
        distance = [
            sum(float((net(x) - model(x)).pow(2).sum()) for x, _ in data[:2])
            for net in (plain.model, refit.model)
        ]
    assert distance[1] < distance[0]


def test_an_intercept_goes_into_the_batchnorm_after_a_consumer_without_bias() -> None:
    model, data = _setup()
    model.c2.register_parameter("bias", None)  # c2 reads layer c1; b2 follows it
    target = Widths({"c1": 5})  # c2's channels all kept: b2 compares whole
    results = {
        intercept: _prune(
            model, data, Reconstruction(scale="best", batches=2, intercept=intercept), target
        )
        for intercept in (False, True)
    }
    assert results[True].plan[0].kept == results[False].plan[0].kept
    assert results[True].plan[0].scale == results[False].plan[0].scale
    assert not torch.equal(results[True].model.c2.weight, results[False].model.c2.weight)
    means = [results[i].model.b2.running_mean for i in (False, True)]
    assert not torch.allclose(means[0], means[1])  # the intercept, folded in
    seen = []
    for net in (model, results[False].model, results[True].model):
        net.b2.register_forward_hook(lambda m, a, o: seen.append(o.double()))
        with torch.no_grad():
            for x, _ in data[:2]:
                net(x)
    unpruned, without, with_intercept = seen[:2], seen[2:4], seen[4:]
    errors = [
        sum(float((a - b).pow(2).sum()) for a, b in zip(outs, unpruned, strict=True))
        for outs in (without, with_intercept)
    ]
    assert errors[1] < errors[0]


def test_a_judge_over_every_candidate_is_the_network_loss_greedy() -> None:
    model, data = _setup(width=8)
    judged = _prune(model, data, Reconstruction(scale="mean-field", refit=False, judge=100))
    exact = _prune(model, data, "loss")
    assert [p.kept for p in judged.plan] == [p.kept for p in exact.plan]


def test_a_judge_of_one_follows_the_reconstruction() -> None:
    model, data = _setup()
    pure = _prune(model, data, Reconstruction(judge=0))
    judged = _prune(model, data, Reconstruction(judge=1))
    assert [p.kept for p in judged.plan] == [p.kept for p in pure.plan]


def test_resumed_passes_choose_what_passes_from_the_input_do() -> None:
    model, data = _setup()
    resumed = _prune(model, data, Reconstruction(batches=2))
    plain = _prune(model, data, Reconstruction(batches=2, resume_gib=0))
    assert [p.kept for p in resumed.plan] == [p.kept for p in plain.plan]
    torch.testing.assert_close(resumed.model.state_dict(), plain.model.state_dict(), rtol=0, atol=0)


def test_a_tolerance_stops_on_the_network_loss() -> None:
    model, data = _setup()
    loose = _prune(model, data, Reconstruction(), target=Tolerance(10.0))
    tight = _prune(model, data, Reconstruction(), target=Tolerance(0.0))
    assert sum(len(p.kept) for p in loose.plan) < sum(len(p.kept) for p in tight.plan)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale": "half"}, "'scale' option of Reconstruction must be one of"),
        ({"judge": -1}, "'judge' option of Reconstruction must be an integer >= 0"),
        ({"batches": 0}, "'batches' option of Reconstruction must be an integer >= 1"),
        ({"points": 1}, "'points' option of Reconstruction must be an integer >= 2"),
        ({"ridge": -1.0}, "'ridge' option of Reconstruction must be a finite number"),
        ({"refit": 1}, "'refit' option of Reconstruction must be True or False"),
        ({"intercept": "yes"}, "'intercept' option of Reconstruction must be True or False"),
        ({"resume_gib": -1}, "'resume_gib' option of Reconstruction must be a finite number"),
        ({"resume_gib": float("nan")}, "'resume_gib' option of Reconstruction must be a finite"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Reconstruction(**options)


def test_it_is_reachable_by_name() -> None:
    assert PruneConfig(objective="reconstruction").make_objective() == Reconstruction()


def test_a_resumed_run_refits_the_restored_layers_to_the_same_weights(tmp_path) -> None:
    model, data = _setup()
    first = _prune(model, data, Reconstruction(), checkpoint=tmp_path / "p.json")
    resumed = _prune(model, data, Reconstruction(), checkpoint=tmp_path / "p.json")
    for a, b in zip(
        first.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_layers_with_an_undescribed_consumer_are_selected_by_the_network_loss(
    monkeypatch,
) -> None:
    model, data = _setup(width=8)
    monkeypatch.setattr(objective_module, "unsupported", lambda module: "a test's refusal")
    fallback = _prune(model, data, Reconstruction())
    exact = _prune(model, data, "loss")
    assert [p.kept for p in fallback.plan] == [p.kept for p in exact.plan]


def test_layers_the_network_loss_selects_score_the_candidates_option(monkeypatch) -> None:
    model, data = _setup(width=8)
    monkeypatch.setattr(objective_module, "unsupported", lambda module: "a test's refusal")
    scored = []
    score = _LayerLoss.score
    monkeypatch.setattr(
        _LayerLoss, "score", lambda self, sets: scored.append(len(sets)) or score(self, sets)
    )
    config = PruneConfig(objective=Reconstruction(), candidates=2, allocator="uniform")
    prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    assert scored and max(scored) == 2  # of 8 channels: a pass per candidate, as "loss" does


class _Doubled(torch.nn.Conv2d):
    """Applies twice its stored weights: not described by them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, 2 * self.weight, self.bias, padding=self.padding)


def test_a_consumer_its_weights_do_not_reproduce_falls_back_to_the_network_loss(
    caplog,
) -> None:
    model, data = _setup(width=8)
    model.c2.__class__ = _Doubled  # the consumer of c1's channels
    with caplog.at_level("INFO", logger="gfsprune"):
        fallback = _prune(model, data, Reconstruction())
    exact = _prune(model, data, "loss")
    assert fallback.plan[0].kept == exact.plan[0].kept
    assert "c1: selected by the network loss (a _Doubled whose outputs" in caplog.text


def test_the_curves_measure_the_network_loss_at_a_few_widths_per_layer(monkeypatch) -> None:
    model, data = _setup()
    widths: list[int] = []
    measure = objective_module._LayerReconstruction._measure

    def counted(self, items):
        widths.append(len(items))
        return measure(self, items)

    monkeypatch.setattr(objective_module._LayerReconstruction, "_measure", counted)
    config = PruneConfig(
        objective=Reconstruction(points=4), candidates=None, allocator=Curves(schedule=Exact())
    )
    result = prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    assert result.macs_ratio == pytest.approx(0.5, rel=0.05)
    assert sorted(widths) == [1, 1, 5, 5, 8, 8, 12, 12]  # two layers of 12 channels


def _references(monkeypatch, allocator) -> list[bool]:
    """Per gathering of statistics in a run: was the reference the network itself?"""
    model, data = _setup()
    references: list[bool] = []
    gather = objective_module.collect_stats

    def recorded(work, unpruned, names, batches, **options):
        references.append(unpruned is work)
        return gather(work, unpruned, names, batches, **options)

    monkeypatch.setattr(objective_module, "collect_stats", recorded)
    config = PruneConfig(objective=Reconstruction(), candidates=None, allocator=allocator)
    prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    return references


def test_statistics_take_one_network_while_nothing_is_pruned(monkeypatch) -> None:
    # two layers: the first's selection sees the unpruned network, the second's not
    assert _references(monkeypatch, "uniform") == [True, False]
    # the curves' pass (every layer alone, the others at full width) sees it for each layer
    assert _references(monkeypatch, Curves(schedule=Exact()))[:2] == [True, True]


def test_every_candidate_is_scored_whatever_the_candidates_option() -> None:
    model, data = _setup()
    example = data[0][0][:1]
    plans = []
    for candidates in (None, 2):
        config = PruneConfig(objective=Reconstruction(), candidates=candidates, allocator="uniform")
        result = prune(model, data, example, target=Macs(0.5), config=config, progress=False)
        plans.append([p.kept for p in result.plan])
    assert plans[0] == plans[1]


def test_the_default_curves_follow_the_reconstruction_path() -> None:
    assert isinstance(Curves().curve_schedule(50, closed_form=True), Exact)
    assert not isinstance(Curves().curve_schedule(50), Exact)


@pytest.mark.parametrize(("ridge", "folds"), [(1e-3, False), ("auto", True)])
def test_only_the_cross_validated_damping_keeps_folds(monkeypatch, ridge, folds: bool) -> None:
    model, data = _setup()
    asked: list[bool] = []
    gather = objective_module.collect_stats

    def recorded(work, unpruned, names, batches, **options):
        asked.append(options["folds"])
        return gather(work, unpruned, names, batches, **options)

    monkeypatch.setattr(objective_module, "collect_stats", recorded)
    config = PruneConfig(objective=Reconstruction(ridge=ridge), allocator="uniform")
    prune(model, data, data[0][0][:1], target=Macs(0.5), config=config, progress=False)
    assert asked and set(asked) == {folds}


@pytest.mark.parametrize(
    ("size", "batches", "ridge", "warned"),
    [
        (4, 1, 1e-3, True),
        (16, 1, 1e-3, False),
        (2, 2, 1e-3, True),
        (2, 2, "auto", False),  # cross-validated: two batches keep a fold
        (4, 1, "auto", True),  # one batch keeps no fold: the damping stays 1e-3
    ],
)
def test_a_refit_with_fewer_calibration_rows_than_unknowns_is_warned_of(
    caplog, size: int, batches: int, ridge, warned: bool
) -> None:
    model, data = _setup()
    small = [(x[:size], y[:size]) for x, y in data]  # the classifier reads 12 inputs
    _prune(model, small, Reconstruction(batches=batches, ridge=ridge))
    found = [r.getMessage() for r in caplog.records if "calibration rows" in r.getMessage()]
    assert bool(found) == warned
    rows = size * batches
    assert all(
        "'fc'" in message and f"from {rows} calibration rows" in message for message in found
    )
