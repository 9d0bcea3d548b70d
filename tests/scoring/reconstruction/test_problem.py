"""A layer's reconstruction problem: the quadratic form and the least-squares refit against
the masked consumers computed explicitly."""

from __future__ import annotations

import pytest
import torch

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
