"""A layer's reconstruction problem: the quadratic form and the least-squares refit against
the masked consumers computed explicitly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gfsprune.scoring.reconstruction.gram import collect_stats
from gfsprune.scoring.reconstruction.problem import AUTO_RIDGE, CV_RIDGES, LayerProblem
from gfsprune.surgery import Masks, find_layers
from tests.scoring.reconstruction.cases import CASES


@pytest.mark.parametrize("case", CASES)
def test_the_quadratic_form_is_the_masked_consumers_error(case: str) -> None:
    c = CASES[case]()
    form = c.problem().form()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        factors = 2 * torch.rand(c.layer.n_items, generator=g)
        factors[torch.rand(c.layer.n_items, generator=g) < 0.3] = 0.0
        expected = c.masked_error(factors)
        assert form.error(factors) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_refit_solves_least_squares_and_never_raises_the_error(case: str, scale: float) -> None:
    c = CASES[case]()
    problem = c.problem()
    items = list(range(0, c.layer.n_items, 2))
    factors = torch.zeros(c.layer.n_items)
    factors[items] = scale
    before = c.masked_error(factors)
    changed = problem.refit(items, scale, ridge=0.0)
    after = c.masked_error(factors)
    assert changed == c.consumers
    assert after <= before
    assert after == pytest.approx(c.refit_error(items), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_an_intercept_is_fitted_into_the_batchnorm_after_a_consumer_without_bias(
    scale: float,
) -> None:
    c = CASES["fan"]()  # 's' has no bias and a BatchNorm after it; 'g' and 'fc' have biases
    items = [0, 2]
    factors = torch.zeros(c.layer.n_items)
    factors[items] = scale
    mean = c.work.bs.running_mean.clone()
    c.problem(intercept=True).refit(items, scale, ridge=0.0)
    assert not torch.equal(c.work.bs.running_mean, mean)
    after = c.masked_error(factors)
    assert after == pytest.approx(c.refit_error(items, intercept=True), rel=1e-5)
    assert after < 0.99 * c.refit_error(items)  # the intercept lowers the error
    # what the BatchNorm puts out: the error weighted by its scale, the intercept included
    seen, want = [], []
    c.work.bs.register_forward_hook(lambda m, a, o: seen.append(o.double()))
    c.unpruned.bs.register_forward_hook(lambda m, a, o: want.append(o.double()))
    with torch.no_grad():
        for x, _ in c.batches:
            with c.masks.candidates(c.layer, c.keep(factors)):
                c.work(x)
            c.unpruned(x)
    through_norm = sum(float((a - b).pow(2).sum()) for a, b in zip(seen, want, strict=True))
    assert through_norm == pytest.approx(c.masked_errors(factors)["s"], rel=1e-6)


def test_a_refit_that_would_raise_the_error_is_not_made() -> None:
    c = CASES["fan"]()
    problem = c.problem()
    items = [0, 1]
    weights = {n: c.work.get_submodule(n).weight.clone() for n in c.consumers}
    problem.refit(items, 1.0, ridge=0.0)  # now the consumers are least-squares optimal
    solved = {n: c.work.get_submodule(n).weight.clone() for n in c.consumers}
    assert any(not torch.equal(weights[n], solved[n]) for n in c.consumers)
    again = c.problem()  # the same data, the refit weights: no damped solve is better
    assert again.refit(items, 1.0, ridge=10.0) == []
    for n in c.consumers:
        assert torch.equal(c.work.get_submodule(n).weight, solved[n])


def _held_out_error(problem, block, fit, test, ridge: float) -> float:
    """Brute force: the damped least squares fitted on ``fit``'s statistics, its error on
    ``test``'s."""
    pos = torch.cat([block.layer, block.fixed])
    lam = ridge * float(fit.gram.diagonal()[pos].mean())
    a = fit.gram[pos][:, pos] + lam * torch.eye(len(pos), dtype=torch.float64)
    weight = torch.linalg.solve(a, fit.cross[pos][:, block.outputs]).T
    w = problem.weights[block.consumer][block.outputs]
    per = ((weight @ test.gram[pos][:, pos]) * weight).sum(1)
    per = per - 2 * (weight * test.cross[pos][:, block.outputs].T).sum(1)
    return float(w @ (per + test.energy[block.outputs]))


@pytest.mark.parametrize("case", ["fan", "heads"])
def test_auto_damping_is_the_cross_validated_one(case: str) -> None:
    c = CASES[case]()
    problem = c.problem()
    for block in problem.blocks:
        s = problem.stats[block.consumer]
        errors = [
            _held_out_error(problem, block, s.fold, s.rest(), r)
            + _held_out_error(problem, block, s.rest(), s.fold, r)
            for r in CV_RIDGES
        ]
        best = CV_RIDGES[min(range(len(errors)), key=errors.__getitem__)]
        assert problem.ridge_of(block, "auto") == pytest.approx(problem.ridge_of(block, best))


class _Scrambled(nn.Module):
    """Features no linear map of the kept inputs predicts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(1000 * x)


def test_auto_damps_noise_most_and_a_well_posed_fit_least() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6), nn.Linear(6, 2, bias=False)).eval()
    x = torch.randn(400, 12)
    layers, _ = find_layers(model, x[:1])
    masks = Masks(model, layers).__enter__()

    def problem(unpruned: nn.Module, rows: int) -> LayerProblem:
        batches = [(part, None) for part in x[:rows].chunk(4)]
        stats = collect_stats(model, unpruned, ["1"], batches, folds=True)
        factors = {"1": masks.input_factors("1")}
        return LayerProblem(layers[0], stats, {"1": model[1]}, factors)

    noise = nn.Sequential(nn.Sequential(copy.deepcopy(model[0]), _Scrambled()), model[1]).eval()
    under = problem(noise, 24)  # 24 rows for 6 unknowns per output
    assert under.stats["1"].fold is not None
    block = under.blocks[0]
    assert under.ridge_of(block, "auto") == pytest.approx(under.ridge_of(block, max(CV_RIDGES)))
    well = problem(model, 400)
    assert well.stats["1"].fold is None
    assert well.ridge_of(well.blocks[0], "auto") == well.ridge_of(well.blocks[0], AUTO_RIDGE)
