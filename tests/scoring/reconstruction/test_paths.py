"""Greedy paths on the reconstruction error: every candidate's closed-form score equals the
error of the explicitly masked (or refit) consumers, and the engine runs them unchanged."""

from __future__ import annotations

import pytest
import torch

from gfsprune.core.select import forward_select
from gfsprune.errors import ConfigError
from gfsprune.scoring.reconstruction.paths import SCALES, greedy, make_path, scorer
from tests.scoring.reconstruction.cases import CASES


def _factors(n: int, items: list[int], value: float) -> torch.Tensor:
    factors = torch.zeros(n)
    factors[items] = value
    return factors


def _parabola_minimum(error, step: float = 1.0) -> float:
    """The minimum over ``a >= 0`` of ``error(a)``, a parabola, from its values at 0,
    ``step`` and ``2 * step``; a second time around the first estimate, for precision."""
    e0, e1, e2 = (error(a) for a in (0.0, step, 2 * step))
    curve, slope = (e2 - 2 * e1 + e0) / (2 * step**2), (4 * e1 - 3 * e0 - e2) / (2 * step)
    if curve <= 1e-12:  # no item contributes: the factor does not matter
        return e0
    best = max(-slope / (2 * curve), 0.0)
    if step == 1.0 and best > 0:
        return _parabola_minimum(error, best)
    return e0 + slope * best + curve * best * best


@pytest.mark.parametrize("case", ["fan", "fan-s", "heads"])
@pytest.mark.parametrize("scale", ["one", "mean-field", "best"])
def test_scaled_scores_are_the_masked_errors_and_greedy_agrees(case: str, scale: str) -> None:
    c = CASES[case]()
    problem = c.problem()
    path = make_path(problem, scale)
    n = c.layer.n_items
    explicit: list[int] = []
    while len(explicit) < n:
        scores = path.errors()
        remaining = [i for i in range(n) if i not in explicit]
        brute = {}
        for j in remaining:
            chosen = [*explicit, j]
            if scale == "best":  # the error is a parabola in the factor: through 3 points
                brute[j] = _parabola_minimum(
                    lambda a, chosen=chosen: c.masked_error(_factors(n, chosen, a))
                )
            else:
                value = n / len(chosen) if scale == "mean-field" else 1.0
                brute[j] = c.masked_error(_factors(n, chosen, value))
        for j in remaining:
            tol = 1e-4 if scale == "best" else 1e-5  # a parabola through float32 errors
            assert float(scores[j]) == pytest.approx(brute[j], rel=tol, abs=1e-9)
        best = min(remaining, key=lambda j: (brute[j], j))
        explicit.append(best)
        path.add(int(torch.argmin(scores)))
    assert path.selected == explicit
    assert path.error == pytest.approx(
        c.masked_error(_factors(n, explicit, path.scale)), rel=1e-5, abs=1e-9
    )


# The statistics' float32 products (relative error ~3e-7) through an undamped least squares:
# relative to the error, or where the fit is nearly exact, to the targets' energy
_UNDAMPED = 1e-3


@pytest.mark.parametrize("case", CASES)
def test_corrective_scores_are_least_squares_errors(case: str) -> None:
    c = CASES[case]()
    problem = c.problem()
    path = make_path(problem, "refit", ridge=0.0)
    near = 1e-6 * sum(float(s.energy.sum()) for s in problem.stats.values())
    n = c.layer.n_items
    for _ in range(min(n, 3)):
        scores = path.errors()
        for j in range(n):
            if j in path.selected:
                assert scores[j] == float("inf")
            else:
                expected = c.refit_error([*path.selected, j])
                assert float(scores[j]) == pytest.approx(expected, rel=_UNDAMPED, abs=near)
        path.add(int(torch.argmin(scores)))
        assert path.error == pytest.approx(c.refit_error(path.selected), rel=_UNDAMPED, abs=near)


@pytest.mark.parametrize("scale", SCALES)
def test_the_engine_on_a_path_scorer_follows_the_closed_form_greedy(scale: str) -> None:
    c = CASES["fan"]()
    problem = c.problem()
    path = make_path(problem, scale)
    errors = greedy(path, c.layer.n_items)
    selection = forward_select(
        scorer(lambda: make_path(problem, scale)), c.layer.n_items, candidates=None
    )
    assert selection.order == path.selected
    assert selection.losses == pytest.approx(errors)
    assert errors[-1] <= errors[0]


def test_an_unknown_scale_is_refused() -> None:
    with pytest.raises(ConfigError, match="'scale' must be one of"):
        make_path(CASES["fan"]().problem(), "half")
