"""The two-layer theory experiment: scores against brute force, the training rule, the curves."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from gfsprune.core.select import forward_select
from gfsprune.errors import ConfigError
from gfsprune.theory import twolayer

# A few-second setting for the checks that do not need the paper's rates.
TINY = twolayer.TheoryConfig(
    width=300, steps=30, n_max=128, fit_range=(32, 128), per_octave=2, subset_draws=2
)


def _mse_of_mean(phi: np.ndarray, y: np.ndarray, items: list[int]) -> float:
    """Brute force: the loss of the plain average of the listed rows (repeats counted)."""
    return float(np.mean((sum(phi[i] for i in items) / len(items) - y) ** 2))


def _assert_close(got, want, **tol) -> None:
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(got, dtype=float)),
        torch.as_tensor(np.asarray(want, dtype=float)),
        **tol,
    )


@pytest.fixture(scope="module")
def quick() -> dict:
    return twolayer.rates_experiment(quick=True, seed=0)


@pytest.fixture(scope="module")
def tiny() -> dict:
    return twolayer.rates_experiment(seed=3, config=TINY)


def test_forward_score_matches_brute_force_multiset() -> None:
    rng = np.random.default_rng(0)
    phi, y = rng.normal(size=(7, 5)), rng.normal(size=5)
    selected = [4, 1, 4, 4]  # a multiset: item 4 three times
    got = twolayer.forward_score(phi, y)(selected, list(range(7)))
    want = [_mse_of_mean(phi, y, selected + [c]) for c in range(7)]
    _assert_close(got, want)


def test_forward_score_from_empty_is_each_neuron_alone() -> None:
    rng = np.random.default_rng(1)
    phi, y = rng.normal(size=(4, 3)), rng.normal(size=3)
    got = twolayer.forward_score(phi, y)([], [3, 0])
    want = [_mse_of_mean(phi, y, [3]), _mse_of_mean(phi, y, [0])]
    _assert_close(got, want)


def test_backward_score_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    phi, y = rng.normal(size=(6, 4)), rng.normal(size=4)
    remaining = [0, 2, 3, 5]
    got = twolayer.backward_score(phi, y)(remaining, [2, 5])
    want = [_mse_of_mean(phi, y, [i for i in remaining if i != c]) for c in (2, 5)]
    _assert_close(got, want)


def test_greedy_with_repeats_can_pick_a_neuron_twice() -> None:
    # The target is 2/3 of neuron 0 plus 1/3 of neuron 1: the best 3-multiset is {0, 0, 1}.
    phi = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    run = forward_select(
        twolayer.forward_score(phi, np.array([2.0, 1.0])), 3, steps=3, repeats=True
    )
    assert sorted(run.order) == [0, 0, 1]
    assert run.losses[-1] == pytest.approx(0.0, abs=1e-12)


def test_one_training_step_is_the_mean_field_gradient_step() -> None:
    # The per-neuron step is eta * N on a loss whose gradient carries 1/N: the update is
    # eta * N * grad(L); compare with central finite differences of L.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=4)
    theta = twolayer._init_neurons(5, 3, rng, out_scale=2.0)
    eta = 1e-3
    step = (theta - twolayer._train(theta, x, y, steps=1, eta=eta)) / eta

    def loss(t: np.ndarray) -> float:
        return twolayer._mse(twolayer._neuron_outputs(t, x)[1], y)

    numeric = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        bump = np.zeros_like(theta)
        bump[idx] = 1e-6
        numeric[idx] = (loss(theta + bump) - loss(theta - bump)) / 2e-6
    _assert_close(step, 5 * numeric, rtol=1e-5, atol=1e-7)


def test_fit_slope_recovers_a_power_law_and_needs_two_points() -> None:
    n = np.array([8.0, 16, 32, 64, 128])
    assert twolayer.fit_slope(n, 0.3 * n**-1.5, lo=16, hi=128) == pytest.approx(-1.5)
    with pytest.raises(ConfigError, match="at least 2 sizes"):
        twolayer.fit_slope(n, n, lo=100, hi=120)


def test_config_rejects_a_fit_range_outside_the_curve() -> None:
    with pytest.raises(ConfigError, match=r"n_min <= fit_range\[0\].*fit_range=\(128, 2048\)"):
        twolayer.TheoryConfig(fit_range=(128, 2048))
    with pytest.raises(ConfigError, match="n_max < width"):
        twolayer.TheoryConfig(width=1024)


def test_crossing_is_interpolated_in_log_log() -> None:
    grid = np.array([10, 100, 1000])
    scratch = np.ones(3)
    assert twolayer._crossing(grid, np.array([10.0, 10.0, 0.1]), scratch) == pytest.approx(
        316.2, rel=1e-3
    )
    assert twolayer._crossing(grid, np.full(3, 0.5), scratch) == 10
    assert twolayer._crossing(grid, np.array([0.5, 0.5, 2.0]), scratch) is None


def test_tiny_run_is_deterministic_and_seed_dependent(tiny: dict) -> None:
    assert twolayer.rates_experiment(seed=3, config=TINY) == tiny
    assert twolayer.rates_experiment(seed=4, config=TINY)["loss"] != tiny["loss"]


def test_backward_elimination_beats_a_random_subset_at_the_largest_size(tiny: dict) -> None:
    # At n = n_max only N - n_max neurons were removed, greedily by loss: the loss stays at
    # most that of a random subset of the same size.
    assert tiny["loss"]["backward"][-1] <= tiny["loss"]["random_subset"][-1]


@pytest.mark.slow
def test_quick_run_has_the_schema(quick: dict) -> None:
    n = quick["n"]
    assert n[0] == 8 and n[-1] == 1024 and n == sorted(set(n))
    assert quick["fit_range"] == [128, 1024]
    assert list(quick["loss"]) == list(twolayer.CURVES) == list(quick["slopes"])
    for curve in quick["loss"].values():
        assert len(curve) == len(n) and all(0.0 < v < 1e3 for v in curve)
    assert set(quick["config"]) >= {"width", "points", "dim", "steps", "eta", "fit_range"}
    assert json.loads(json.dumps(quick)) == {
        **quick,
        "config": json.loads(json.dumps(quick["config"])),
    }


@pytest.mark.slow
def test_quick_run_orders_the_rates_as_the_paper_says(quick: dict) -> None:
    slopes, whole, loss = quick["slopes"], quick["slopes_whole_range"], quick["loss"]
    assert slopes["greedy_pretrained"] <= slopes["scratch"] - 0.5
    assert slopes["greedy_pretrained"] < slopes["random_subset"]
    assert -1.3 <= whole["random_subset"] <= -0.5
    assert loss["greedy_pretrained"][-1] < loss["scratch"][-1]
    assert loss["greedy_pretrained"][-1] < loss["random_subset"][-1]
    assert quick["crossing_n"] is not None and quick["crossing_n"] < 1024


def test_save_rates_writes_the_figure_and_the_json(tiny: dict, tmp_path) -> None:
    out = tmp_path / "new" / "theory"
    paths = twolayer.save_rates(tiny, out)
    assert paths == [out / "rates.png", out / "rates.json"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths[1].read_text())
    assert saved["slopes"] == tiny["slopes"] and saved["loss"] == tiny["loss"]


def test_save_rates_checks_before_writing(tiny: dict, tmp_path) -> None:
    file = tmp_path / "a_file"
    file.write_text("")
    with pytest.raises(ConfigError, match="output folder .*a_file.* is a file"):
        twolayer.save_rates(tiny, file)
    with pytest.raises(ConfigError, match=r"keys \['slopes'\] are missing"):
        twolayer.save_rates({k: v for k, v in tiny.items() if k != "slopes"}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_format_slopes_lists_every_curve_and_the_crossing(tiny: dict) -> None:
    text = twolayer.format_slopes(tiny)
    lines = text.splitlines()
    assert "slope n=32..128" in lines[0]
    for name in twolayer.CURVES:
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{tiny['slopes'][name]:.2f}" in row
    assert "scratch" in lines[len(twolayer.CURVES) + 1]
    assert text.count("claim ") == len(tiny["claims"])


def test_quick_and_default_settings_differ_only_in_size() -> None:
    default = twolayer.TheoryConfig()
    assert twolayer.QUICK.fit_range == default.fit_range == (128, 1024)
    assert replace(twolayer.QUICK, width=default.width, backward_candidates=None) == default


def test_a_negative_seed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'seed' must be a non-negative integer. Got -1"):
        twolayer.rates_experiment(seed=-1, config=TINY)
