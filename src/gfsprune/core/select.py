"""Greedy forward selection and backward elimination over abstract items.

This module knows nothing about neural networks: an item is an integer in ``range(n_items)``
and the caller supplies a ``score`` function that returns the loss of a candidate set. Keeping
the engine abstract lets the same code drive the two-layer theory experiment, channel
selection in real networks, and the tests' brute-force checks.

Forward selection (Ye et al., 2020, Algorithm 1) starts from the empty set and, at each step,
adds the candidate whose addition gives the lowest loss. Backward elimination starts from the
full set and removes the item whose removal gives the lowest loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gfsprune.errors import ConfigError, LossError

__all__ = ["Selection", "ScoreFn", "ScreenFn", "backward_eliminate", "forward_select", "rank"]

#: ``score(current, candidates)`` returns one loss per candidate, in the order given.
ScoreFn = Callable[[list[int], list[int]], Sequence[float]]
#: ``screen(selected, allowed)`` returns the allowed items worth scoring at a step, or
#: ``None`` for a random subset of ``candidates`` of them.
ScreenFn = Callable[[list[int], list[int]], list[int] | None]
#: ``callback(step, item, loss)`` is called after every pick, ``step`` counting from 1.
StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Selection:
    """The outcome of a greedy run.

    Attributes:
        order: The items in the order they were picked (added, or removed for backward
            elimination); with repeats an item may appear more than once.
        losses: ``losses[k]`` is the loss right after the ``k + 1``-th pick.
        evaluations: How many candidate losses were computed in total (the cost of the run).
    """

    order: list[int]
    losses: list[float]
    evaluations: int


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"'{name}' must be a positive integer. Got {value!r} instead.")
    return int(value)


def _check_candidates(candidates: int | None) -> int | None:
    return None if candidates is None else _check_positive_int("candidates", candidates)


def _draw(allowed: list[int], candidates: int | None, rng: np.random.Generator) -> list[int]:
    """A uniformly random subset of ``allowed`` of size ``candidates``, sorted ascending."""
    if candidates is None or candidates >= len(allowed):
        return allowed
    picked = rng.choice(len(allowed), size=candidates, replace=False)
    return sorted(allowed[i] for i in picked)


_NAN_FIX = "check the model and data for NaN/inf values (a diverged training run?)."


def _finite_loss(value: float, name: str, selected: list[int]) -> float:
    loss = float(value)
    if math.isnan(loss):
        raise LossError(f"'{name}' returned NaN with {len(selected)} item(s) selected; {_NAN_FIX}")
    return loss


def _checked(
    losses: Sequence[float], cands: list[int], current: list[int], name: str
) -> list[float]:
    """``losses`` as floats, one per candidate and none NaN."""
    values = [float(v) for v in losses]
    if len(values) != len(cands):
        raise ConfigError(
            f"'{name}' must return one loss per candidate: asked for {len(cands)}, "
            f"got {len(values)}."
        )
    bad = [c for c, v in zip(cands, values, strict=True) if math.isnan(v)]
    if bad:
        raise LossError(
            f"'{name}' returned NaN for candidate(s) {bad[:5]} with {len(current)} item(s) "
            f"selected; {_NAN_FIX}"
        )
    return values


def rank(
    score: ScoreFn,
    current: list[int],
    cands: list[int],
    *,
    tie: float = 0.0,
    count: int | None = None,
    refine: ScoreFn | None = None,
) -> list[tuple[int, float]]:
    """The ``count`` best ``(candidate, loss)`` pairs (all by default), best first.

    With ``tie > 0``, candidates whose losses are within ``tie`` (relative) of the lowest
    remaining loss are tied and the lowest index among them comes first: two ways of computing
    the losses (evaluators, torch versions, devices) may order such candidates differently by
    float rounding alone. A candidate whose distance to the best lies near ``tie`` itself
    (between ``tie / 2`` and ``3 * tie / 2``) could fall on either side of the window by
    rounding too; then every candidate within ``3 * tie / 2`` of the best is re-scored by
    ``refine`` (the same losses computed precisely, e.g. in float64) and the window is decided
    on those. So two scorers whose losses are each within about ``tie / 4`` of the precise ones
    rank alike, even where float rounding orders them differently. With
    ``tie=0`` the lowest loss wins, ties to the lowest index, and ``refine`` is not used.
    """
    losses = _checked(score(list(current), list(cands)), cands, current, "score")
    pairs = sorted(zip(cands, losses, strict=True), key=lambda pair: (pair[1], pair[0]))
    count = len(pairs) if count is None else count
    if tie == 0:
        return pairs[:count]
    refined: set[int] = set()
    ranked: list[tuple[int, float]] = []
    while pairs and len(ranked) < count:
        best = pairs[0][1]
        near = [c for c, v in pairs if v <= best + 1.5 * tie * abs(best)]
        edge = [c for c, v in pairs if best + 0.5 * tie * abs(best) < v and c in near]
        if refine is not None and set(edge) - refined:
            todo = [c for c in near if c not in refined]
            precise = dict(
                zip(
                    todo,
                    _checked(refine(list(current), todo), todo, current, "refine"),
                    strict=True,
                )
            )
            refined.update(todo)
            pairs = sorted(
                ((c, precise.get(c, v)) for c, v in pairs), key=lambda pair: (pair[1], pair[0])
            )
            best = pairs[0][1]
        window = [pair for pair in pairs if pair[1] <= best + tie * abs(best)]
        chosen = min(window)  # the lowest index among the tied
        ranked.append(chosen)
        pairs.remove(chosen)
    return ranked


def forward_select(
    score: ScoreFn,
    n_items: int,
    *,
    steps: int | None = None,
    tolerance: float | None = None,
    reference: float | None = None,
    candidates: int | None = None,
    repeats: bool = False,
    seed: int = 0,
    multiple_of: int = 1,
    picks: Callable[[int], int] | None = None,
    rescore: int | None = None,
    screen: ScreenFn | None = None,
    tie: float = 0.0,
    refine: ScoreFn | None = None,
    monitor: Callable[[list[int]], float] | None = None,
    callback: StepCallback | None = None,
) -> Selection:
    """Greedy forward selection: grow a set from empty by the best candidate at each step.

    Args:
        score: ``score(selected, candidates)`` gives, for each candidate ``c``, the loss of
            ``selected + [c]``; all candidates come in one call so that callers can batch.
        n_items: Items are ``0 .. n_items - 1``.
        steps: Stop after this many picks. Defaults to ``n_items`` when no threshold is
            given; required when ``repeats=True``.
        tolerance: Stop as soon as the loss is ``<= reference + tolerance`` (and the set
            size is a multiple of ``multiple_of``).
        reference: The reference loss of the threshold (default 0.0).
        candidates: Evaluate a uniformly random subset of this many allowed items at each
            step (``None``: all of them).
        repeats: Allow an item to be picked more than once (the theory's multiset).
        seed: Seeds the candidate sampling.
        multiple_of: With a threshold, stop only at set sizes that are multiples of this
            (or at ``n_items``).
        picks: ``picks(size)``: how many of the step's best candidates to add at once when
            the set has ``size`` items (default 1, the exact greedy rule). Each added item's
            recorded loss is its own score (the set before the step plus that item).
        rescore: With several picks per step, each pick after the first scores again the
            ``rescore`` best remaining candidates of the step's ranking, on top of the picks
            so far, and adds the best of them (so that a candidate that only repeats what
            was just added loses its place); ``None``: the step's ranking is taken as it is.
        screen: ``screen(selected, allowed)`` returns the candidates to score at a step
            (e.g. the best by a cheap first-order estimate), or ``None`` for a random subset
            of ``candidates`` allowed items (the default at every step).
        tie: Candidates whose losses are within this relative distance of the best are
            tied; the lowest index among them wins (so that float rounding does not decide;
            see :func:`rank`).
        refine: Like ``score``, but precise (e.g. float64): re-scores the candidates near the
            edge of the tie window, where rounding could decide (see :func:`rank`).
        monitor: ``monitor(selected)`` gives the loss recorded after each pick and compared
            with the threshold, instead of the pick's own score (e.g. a fixed held-out batch
            while picks are scored on fresh mini-batches, as in the paper's deep version).
        callback: Called as ``callback(step, item, loss)`` after every pick.

    Returns:
        The picks and the loss after each pick.

    Example:
        >>> target = [3.0, 1.0, 2.0]
        >>> score = lambda sel, cands: [abs(6 - sum(target[i] for i in sel + [c])) for c in cands]
        >>> forward_select(score, 3, steps=2).order
        [0, 2]
    """
    n_items = _check_positive_int("n_items", n_items)
    candidates = _check_candidates(candidates)
    threshold = _threshold(tolerance, reference)
    if steps is None:
        if repeats:
            raise ConfigError("'steps' is required when repeats=True; the set has no size limit.")
        steps = n_items
    steps = _check_positive_int("steps", steps)
    multiple_of = _check_positive_int("multiple_of", multiple_of)
    tie = _check_tie(tie)
    if not repeats and steps > n_items:
        raise ConfigError(
            f"'steps' must be at most n_items={n_items} when repeats=False. Got {steps} instead."
        )
    rng = np.random.default_rng(seed)
    selected: list[int] = []
    losses: list[float] = []
    evaluations = 0
    while len(selected) < steps:
        taken = set(selected)
        allowed = list(range(n_items)) if repeats else [i for i in range(n_items) if i not in taken]
        screened = screen(list(selected), allowed) if screen else None
        cands = _draw(allowed, candidates, rng) if screened is None else sorted(screened)
        if not cands or not set(cands) <= set(allowed):
            raise ConfigError(
                f"'screen' must return a non-empty subset of the allowed items. Got {cands[:5]}."
            )
        count = 1 if picks is None else _check_positive_int("picks", picks(len(selected)))
        count = min(count, steps - len(selected), len(cands))
        if threshold is not None:  # never step over a size the threshold may stop at
            count = min(count, multiple_of - len(selected) % multiple_of)
        ranked = rank(
            score,
            selected,
            cands,
            tie=tie,
            count=count if rescore is None else None,
            refine=refine,
        )
        evaluations += len(cands)
        if rescore is not None:
            ranked, more = _rescored(score, selected, ranked, count, rescore, tie, refine)
            evaluations += more
        for i, (item, loss) in enumerate(ranked):
            selected.append(item)
            if monitor is not None and i == len(ranked) - 1:
                loss = _finite_loss(monitor(list(selected)), "monitor", selected)
            losses.append(loss)
            if callback is not None:
                callback(len(selected), item, loss)
        if threshold is not None and losses[-1] <= threshold and len(selected) % multiple_of == 0:
            break
    return Selection(order=selected, losses=losses, evaluations=evaluations)


def _rescored(
    score: ScoreFn,
    selected: list[int],
    ranked: list[tuple[int, float]],
    count: int,
    rescore: int,
    tie: float,
    refine: ScoreFn | None,
) -> tuple[list[tuple[int, float]], int]:
    """``count`` picks from a step's full ``ranked`` list: the first as ranked, each later one
    the best of the ``rescore`` next-ranked candidates scored with the picks so far. Returns
    the picks and how many candidates were scored again."""
    rescore = _check_positive_int("rescore", rescore)
    chosen, rest, evaluations = list(ranked[:1]), list(ranked[1:]), 0
    while len(chosen) < count and rest:
        current = selected + [item for item, _ in chosen]
        top = sorted(item for item, _ in rest[:rescore])
        best = rank(score, current, top, tie=tie, count=1, refine=refine)[0]
        evaluations += len(top)
        chosen.append(best)
        rest = [pair for pair in rest if pair[0] != best[0]]
    return chosen, evaluations


def backward_eliminate(
    score_without: ScoreFn,
    n_items: int,
    *,
    steps: int,
    candidates: int | None = None,
    seed: int = 0,
    tie: float = 0.0,
    refine: ScoreFn | None = None,
    callback: StepCallback | None = None,
) -> Selection:
    """Greedy backward elimination: shrink the full set by the least harmful removal.

    Args:
        score_without: ``score_without(remaining, candidates)`` gives, for each candidate
            ``c`` in ``remaining``, the loss of ``remaining`` without ``c``.
        n_items: The full set is ``0 .. n_items - 1``.
        steps: How many items to remove (at most ``n_items``).
        candidates: Evaluate a uniformly random subset of this many remaining items at each
            step (``None``: all of them).
        seed: Seeds the candidate sampling.
        tie: As in :func:`forward_select`.
        refine: Like ``score_without``, but precise (see :func:`rank`).
        callback: Called as ``callback(step, item, loss)`` after every removal.

    Returns:
        The removals in order (``order``) and the loss after each removal.

    Example:
        >>> weights = [3.0, 1.0, 2.0]
        >>> score = lambda rest, cands: [sum(weights[i] for i in rest if i != c) for c in cands]
        >>> backward_eliminate(score, 3, steps=2).order
        [0, 2]
    """
    n_items = _check_positive_int("n_items", n_items)
    candidates = _check_candidates(candidates)
    steps = _check_positive_int("steps", steps)
    tie = _check_tie(tie)
    if steps > n_items:
        raise ConfigError(f"'steps' must be at most n_items={n_items}. Got {steps} instead.")
    rng = np.random.default_rng(seed)
    remaining = list(range(n_items))
    removed: list[int] = []
    losses: list[float] = []
    evaluations = 0
    for step in range(1, steps + 1):
        cands = _draw(remaining, candidates, rng)
        ((item, loss),) = rank(score_without, remaining, cands, tie=tie, count=1, refine=refine)
        remaining.remove(item)
        removed.append(item)
        losses.append(loss)
        evaluations += len(cands)
        if callback is not None:
            callback(step, item, loss)
    return Selection(order=removed, losses=losses, evaluations=evaluations)


def _check_tie(tie: object) -> float:
    if isinstance(tie, bool) or not isinstance(tie, int | float) or not 0 <= tie < math.inf:
        raise ConfigError(f"'tie' must be a finite number >= 0. Got {tie!r} instead.")
    return float(tie)


def _threshold(tolerance: float | None, reference: float | None) -> float | None:
    if tolerance is None and reference is None:
        return None
    for name, value in (("tolerance", tolerance), ("reference", reference)):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise ConfigError(f"'{name}' must be a finite number. Got {value!r} instead.")
    if tolerance is not None and tolerance < 0:
        raise ConfigError(f"'tolerance' must be >= 0. Got {tolerance!r} instead.")
    return float(reference or 0.0) + float(tolerance or 0.0)
