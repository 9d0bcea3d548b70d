"""The paper's two-layer theory, reproduced: training loss against subnetwork size.

A mean-field two-layer network ``f(x) = (1/N) sum_i b_i relu(a_i . x + c_i)`` is fit to a small
regression data set (the paper's two-layer setting). Five curves of training loss against the
number of neurons ``n`` are measured:

- ``greedy_pretrained``: greedy forward selection with repeats (Frank-Wolfe, step 1/n) from a
  wide network pre-trained by gradient descent;
- ``greedy_random``: the same from the wide network's random initialisation;
- ``random_subset``: a uniformly random subset of the pre-trained network's neurons;
- ``scratch``: an ``n``-neuron network trained from scratch with the wide network's rule and
  step budget (best of a small step-size sweep);
- ``backward``: backward elimination from the pre-trained network, read at ``n = N - removals``.

The paper predicts ``O(1/n^2)`` for greedy selection once the target lies inside the convex hull
of the neuron functions, against ``O(1/n)`` for random subsets and from-scratch training.

A neuron is summarised by its outputs on the ``m`` data points, a row of ``phi`` (N, m); a
subnetwork is then the mean of its rows, so every greedy step scores all candidates with one
matrix operation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gfsprune.core.select import ScoreFn, backward_eliminate, forward_select
from gfsprune.errors import ConfigError, LossError
from gfsprune.io.atomic import write_text
from gfsprune.theory.plots import plot_rates

__all__ = [
    "CURVES",
    "TheoryConfig",
    "backward_score",
    "fit_slope",
    "format_slopes",
    "forward_score",
    "rates_experiment",
    "save_rates",
]

#: The curves of ``rates.json``, in plotting order.
CURVES = ("greedy_pretrained", "greedy_random", "random_subset", "scratch", "backward")


@dataclass(frozen=True)
class TheoryConfig:
    """Settings of the two-layer experiment (docs/RESULTS.md has the calibration behind each
    default).

    Attributes:
        dim: Input dimension ``d``; inputs lie on the unit sphere.
        points: Training points ``m``. The fast rate needs ``width`` much larger than ``m``
            (the target deep inside the convex hull of the neuron functions): at m=10 every
            seed tried shows it by n=128, at m=20 (N/m=400) only some do.
        width: Neurons ``N`` of the wide network.
        teacher_width: Hidden units of the random ReLU teacher that makes the targets.
        out_scale: Standard deviation of the output weights ``b`` at initialisation. With 1,
            the random network's hull hardly reaches the unit-variance target; 5 puts it well
            inside, for the random and the pre-trained network alike.
        steps: Full-batch gradient-descent steps, for the wide and the from-scratch networks
            alike (a fair comparison gives both the same budget).
        eta: Step size of the wide network. The per-neuron step is ``eta * N`` on the
            ``(1/N)``-averaged output (mean-field scaling), which keeps every neuron's output
            of order one; Adam would not. 0.1 gave the lowest 300-step loss among 0.01..0.64.
        scratch_etas: From-scratch networks keep the best of these step sizes.
        scratch_draws: Initialisations averaged per size and step size for the from-scratch
            curve (a single one is noisy: small networks on few points sometimes interpolate).
        n_min: Smallest subnetwork size on the curves.
        n_max: Largest subnetwork size on the curves (greedy runs this many steps).
        per_octave: Grid points per doubling of ``n``.
        fit_range: The slopes are fitted over this range of ``n``; fixed by the issue in
            advance, never tuned to the outcome.
        subset_draws: Random subsets averaged per size.
        backward_candidates: Candidates scored per backward-elimination step (``None``: all).
    """

    dim: int = 3
    points: int = 10
    width: int = 8000
    teacher_width: int = 50
    out_scale: float = 5.0
    steps: int = 300
    eta: float = 0.1
    scratch_etas: tuple[float, ...] = (0.05, 0.1, 0.2)
    scratch_draws: int = 3
    n_min: int = 8
    n_max: int = 1024
    per_octave: int = 4
    fit_range: tuple[int, int] = (128, 1024)
    subset_draws: int = 5
    backward_candidates: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.n_min <= self.fit_range[0] < self.fit_range[1] <= self.n_max:
            raise ConfigError(
                "TheoryConfig needs 0 < n_min <= fit_range[0] < fit_range[1] <= n_max. Got "
                f"n_min={self.n_min}, fit_range={self.fit_range}, n_max={self.n_max} instead."
            )
        if self.n_max >= self.width:
            raise ConfigError(
                f"TheoryConfig needs n_max < width; got n_max={self.n_max}, "
                f"width={self.width}. Raise 'width' or lower 'n_max'."
            )


#: The smaller setting of ``--quick`` (seconds, for smoke tests); same code, same fit range.
QUICK = TheoryConfig(width=2000, backward_candidates=64)


def _init_neurons(
    width: int, dim: int, rng: np.random.Generator, *, out_scale: float = 1.0
) -> np.ndarray:
    """Random neurons, one row ``[a (d), c, b]`` each: standard normal, ``b`` times
    ``out_scale``."""
    theta = rng.standard_normal((width, dim + 2))
    theta[:, dim + 1] *= out_scale
    return theta


def _neuron_outputs(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations (m, N) and neuron outputs ``phi`` (N, m) of neurons ``theta``."""
    dim = x.shape[1]
    pre = x @ theta[:, :dim].T + theta[:, dim]  # (m, N)
    return pre, (np.maximum(pre, 0.0) * theta[:, dim + 1]).T


def _mse(phi: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((phi.mean(axis=0) - y) ** 2))


def _train(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray, *, steps: int, eta: float
) -> np.ndarray:
    """Full-batch gradient descent on the squared loss with the mean-field step ``eta * N``.

    The gradient of ``mean((f - y)^2)`` with respect to neuron ``i`` carries a factor ``1/N``;
    the per-neuron step ``eta * N`` cancels it, so the update below has no ``N`` in it.
    Returns new parameters (inf/NaN entries if the step size diverged).
    """
    dim = x.shape[1]
    theta = theta.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            pre, phi = _neuron_outputs(theta, x)
            g = 2.0 * (phi.mean(axis=0) - y) / len(y)  # (m,) = N * dL/df
            active = pre > 0.0  # (m, N)
            grad_pre = g[:, None] * active * theta[:, dim + 1]  # (m, N)
            grad = np.empty_like(theta)
            grad[:, :dim] = grad_pre.T @ x
            grad[:, dim] = grad_pre.sum(axis=0)
            grad[:, dim + 1] = g @ (pre * active)
            theta -= eta * grad
    return theta


def forward_score(phi: np.ndarray, y: np.ndarray) -> ScoreFn:
    """The greedy forward-selection score on neuron outputs ``phi`` (N, m) and targets ``y``.

    ``score(selected, candidates)`` returns, for each candidate ``c``, the mean squared error of
    the mean of rows ``selected + [c]`` (a multiset: repeats count twice), all in one matrix op.

    Example:
        >>> phi = np.array([[0.0, 2.0], [2.0, 0.0]])
        >>> forward_score(phi, np.ones(2))([0], [0, 1]).round(3).tolist()
        [1.0, 0.0]
    """
    sq_norms = np.einsum("ij,ij->i", phi, phi)

    def score(selected: list[int], candidates: list[int]) -> np.ndarray:
        k = len(selected) + 1
        # ||s + phi_c - k y||^2 with r = k y - s, the residual of the running sum s.
        r = k * y - np.bincount(selected, minlength=len(phi)) @ phi
        cands = np.asarray(candidates, dtype=np.intp)
        return (r @ r - 2.0 * (phi[cands] @ r) + sq_norms[cands]) / (k * k * len(y))

    return score


def backward_score(phi: np.ndarray, y: np.ndarray) -> ScoreFn:
    """The backward-elimination score: ``score(remaining, candidates)`` gives, for each
    candidate, the mean squared error of the mean of ``remaining`` without it.

    Example:
        >>> phi = np.array([[0.0, 2.0], [2.0, 0.0], [1.0, 1.0]])
        >>> backward_score(phi, np.ones(2))([0, 1, 2], [0, 2]).round(3).tolist()
        [0.25, 0.0]
    """

    def score(remaining: list[int], candidates: list[int]) -> np.ndarray:
        k = len(remaining) - 1
        total = phi[np.asarray(remaining, dtype=np.intp)].sum(axis=0)  # (m,)
        diff = total - phi[np.asarray(candidates, dtype=np.intp)] - k * y  # (C, m)
        return np.einsum("ij,ij->i", diff, diff) / (k * k * len(y))

    return score


def _grid(config: TheoryConfig) -> np.ndarray:
    """Subnetwork sizes ``n_min * 2^(k / per_octave)`` up to ``n_max``, rounded, distinct."""
    octaves = math.log2(config.n_max / config.n_min)
    k = np.arange(round(octaves * config.per_octave) + 1)
    return np.unique(np.round(config.n_min * 2.0 ** (k / config.per_octave)).astype(int))


def fit_slope(n: np.ndarray, loss: np.ndarray, *, lo: float, hi: float) -> float:
    """The least-squares slope of ``log(loss)`` against ``log(n)`` over ``lo <= n <= hi``.

    Example:
        >>> n = np.array([1.0, 2.0, 4.0, 8.0])
        >>> round(fit_slope(n, 3.0 / n**2, lo=2, hi=8), 6)
        -2.0
    """
    n, loss = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    keep = (n >= lo) & (n <= hi)
    if keep.sum() < 2:
        raise ConfigError(f"fit_slope needs at least 2 sizes in [{lo}, {hi}]. Got {keep.sum()}.")
    return float(np.polyfit(np.log(n[keep]), np.log(loss[keep]), 1)[0])


def _make_data(config: TheoryConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs on the unit sphere of R^d and standardised targets of a random ReLU teacher."""
    x = rng.standard_normal((config.points, config.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    teacher = _init_neurons(config.teacher_width, config.dim, rng)
    target = _neuron_outputs(teacher, x)[1].mean(axis=0)
    return x, (target - target.mean()) / target.std()


def _greedy_curve(phi: np.ndarray, y: np.ndarray, grid: np.ndarray, *, seed: int) -> np.ndarray:
    """Greedy forward selection with repeats: one run of ``max(grid)`` steps gives every size."""
    run = forward_select(
        forward_score(phi, y), len(phi), steps=int(grid[-1]), repeats=True, seed=seed
    )
    return np.asarray(run.losses)[grid - 1]


def _backward_curve(
    phi: np.ndarray, y: np.ndarray, grid: np.ndarray, *, candidates: int | None, seed: int
) -> np.ndarray:
    """Backward elimination down to ``min(grid)`` neurons; the loss at ``n`` follows
    ``N - n`` removals."""
    width = len(phi)
    run = backward_eliminate(
        backward_score(phi, y), width, steps=width - int(grid[0]), candidates=candidates, seed=seed
    )
    return np.asarray(run.losses)[width - grid - 1]


def _subset_curve(
    phi: np.ndarray, y: np.ndarray, grid: np.ndarray, *, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """The mean loss of ``draws`` uniformly random ``n``-subsets (no repeats) per size."""
    return np.array(
        [
            np.mean([_mse(phi[rng.choice(len(phi), n, replace=False)], y) for _ in range(draws)])
            for n in grid
        ]
    )


def _scratch_curve(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray, config: TheoryConfig, rng: np.random.Generator
) -> np.ndarray:
    """The final loss of ``n``-neuron networks trained from scratch: the mean over
    ``scratch_draws`` initialisations, for the best step size in ``scratch_etas``."""
    losses = []
    for n in grid:
        finals = np.empty((config.scratch_draws, len(config.scratch_etas)))
        for draw in range(config.scratch_draws):
            theta0 = _init_neurons(int(n), config.dim, rng, out_scale=config.out_scale)
            for k, eta in enumerate(config.scratch_etas):
                theta = _train(theta0, x, y, steps=config.steps, eta=eta)
                finals[draw, k] = _mse(_neuron_outputs(theta, x)[1], y)
        means = finals.mean(axis=0)
        if not np.isfinite(means).any():
            raise LossError(
                f"every step size in scratch_etas={config.scratch_etas} diverged for n={n}; "
                "lower the step sizes."
            )
        losses.append(np.nanmin(np.where(np.isfinite(means), means, np.nan)))
    return np.asarray(losses)


def _crossing(grid: np.ndarray, greedy: np.ndarray, scratch: np.ndarray) -> float | None:
    """The size from which greedy stays below scratch (log-log interpolated between grid
    points); ``None`` when greedy is not below scratch at the largest size."""
    gap = np.log(greedy) - np.log(scratch)  # < 0 where greedy is better
    if gap[-1] >= 0:
        return None
    above = np.flatnonzero(gap >= 0)
    if len(above) == 0:
        return float(grid[0])
    i = int(above[-1])
    frac = gap[i] / (gap[i] - gap[i + 1])
    return float(grid[i] * (grid[i + 1] / grid[i]) ** frac)


def rates_experiment(
    *, quick: bool = False, seed: int = 0, config: TheoryConfig | None = None
) -> dict:
    """Measure the five loss-vs-size curves and their log-log slopes.

    Args:
        quick: Use the smaller ``QUICK`` setting (ignored when ``config`` is given).
        seed: Seeds the data, the networks, the random subsets and the candidate sampling.
        config: The full setting; defaults to ``TheoryConfig()`` (or ``QUICK``).

    Returns:
        The content of ``rates.json``: sizes ``n``, ``loss`` and ``slopes`` per curve, the
        ``fit_range``, the crossing of greedy and scratch, the paper's claims checked, and the
        settings.

    Example:
        >>> rates_experiment(quick=True)["claims"]["greedy_slope_at_most_-1.5"]
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"'seed' must be a non-negative integer. Got {seed!r} instead.")
    if config is None:
        config = QUICK if quick else TheoryConfig()
    data_rng, init_rng, subset_rng, scratch_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    x, y = _make_data(config, data_rng)
    theta0 = _init_neurons(config.width, config.dim, init_rng, out_scale=config.out_scale)
    theta = _train(theta0, x, y, steps=config.steps, eta=config.eta)
    phi = _neuron_outputs(theta, x)[1]
    phi0 = _neuron_outputs(theta0, x)[1]
    if not np.isfinite(phi).all():
        raise LossError(f"training the wide network diverged with eta={config.eta}; lower 'eta'.")
    grid = _grid(config)
    loss = {
        "greedy_pretrained": _greedy_curve(phi, y, grid, seed=seed),
        "greedy_random": _greedy_curve(phi0, y, grid, seed=seed),
        "random_subset": _subset_curve(phi, y, grid, draws=config.subset_draws, rng=subset_rng),
        "scratch": _scratch_curve(x, y, grid, config, scratch_rng),
        "backward": _backward_curve(phi, y, grid, candidates=config.backward_candidates, seed=seed),
    }
    lo, hi = config.fit_range
    slopes = {k: fit_slope(grid, v, lo=lo, hi=hi) for k, v in loss.items()}
    whole = {k: fit_slope(grid, v, lo=grid[0], hi=grid[-1]) for k, v in loss.items()}
    return {
        "n": grid.tolist(),
        "loss": {k: v.tolist() for k, v in loss.items()},
        "slopes": slopes,
        "slopes_whole_range": whole,
        "fit_range": [lo, hi],
        "crossing_n": _crossing(grid, loss["greedy_pretrained"], loss["scratch"]),
        "claims": _claims(slopes, whole, loss),
        "wide_loss": {"pretrained": _mse(phi, y), "random": _mse(phi0, y)},
        "seed": seed,
        "quick": quick,
        "config": asdict(config),
    }


def _claims(slopes: dict, whole: dict, loss: dict) -> dict[str, bool]:
    """The paper's claims as the issue states them, checked on one run."""
    greedy = slopes["greedy_pretrained"]
    return {
        "greedy_slope_at_most_-1.5": greedy <= -1.5,
        "scratch_at_least_0.5_shallower": slopes["scratch"] >= greedy + 0.5,
        "greedy_below_scratch_at_n_max": bool(loss["greedy_pretrained"][-1] < loss["scratch"][-1]),
        "random_subset_whole_range_slope_in_[-1.3,-0.5]": -1.3 <= whole["random_subset"] <= -0.5,
    }


def save_rates(result: dict, out: str | Path) -> list[Path]:
    """Write ``out/rates.png`` and ``out/rates.json``, creating ``out``.

    Args:
        result: The dictionary returned by ``rates_experiment``.
        out: The output folder.

    Returns:
        The paths written: the figure, then the JSON.
    """
    missing = [k for k in ("n", "loss", "slopes", "fit_range", "config", "seed") if k not in result]
    if missing:
        raise ConfigError(
            f"save_rates needs the dictionary returned by rates_experiment; keys {missing} "
            "are missing."
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output folder '{out}' is a file; pass a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_text(out / "rates.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return [plot_rates(result, out / "rates.png"), json_path]


def format_slopes(result: dict) -> str:
    """A plain-text table of the fitted log-log slopes, the crossing, and the claims checked."""
    lo, hi = result["fit_range"]
    n = result["n"]
    lines = [
        f"{'curve':<19}{f'slope n={lo}..{hi}':>18}{f'slope n={n[0]}..{n[-1]}':>18}"
        f"{f'loss at n={n[-1]}':>18}"
    ]
    for name, loss in result["loss"].items():
        lines.append(
            f"{name:<19}{result['slopes'][name]:>18.2f}"
            f"{result['slopes_whole_range'][name]:>18.2f}{loss[-1]:>18.2e}"
        )
    cross = result["crossing_n"]
    if cross is None:
        lines.append(f"greedy_pretrained is not below scratch at n={n[-1]}")
    elif cross <= n[0]:
        lines.append(f"greedy_pretrained is below scratch at every n from {n[0]}")
    else:
        lines.append(f"greedy_pretrained drops below scratch for good at n ~ {cross:.0f}")
    lines += [f"claim {name}: {'yes' if ok else 'NO'}" for name, ok in result["claims"].items()]
    return "\n".join(lines)
