"""Width allocators: how a budget (MACs, parameters, any metric of the cost model) becomes
per-layer widths.

An allocator is one small class behind :class:`WidthAllocator`. Widths come from each
layer's :func:`allowed_widths`: with ``round_to=N`` every pruned width is a multiple of ``N``
(or the full width), so that the smaller network keeps sizes fast kernels are made for, and
of the layer's item size (heads, grouped-convolution offsets), so that whole items are kept.
``prune`` asks the allocator again after every layer, with that layer's actual picks fixed,
so the budget is met even where *which* channels are kept changes the cost (a group joined by
a concatenation keeps more or fewer channels of each concatenated part). Greedy selection
decides which channels fill the widths.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from gfsprune.core.cost import CostModel
from gfsprune.core.curves import LossCurve
from gfsprune.core.schedules import Exact, Fast, Schedule
from gfsprune.errors import ConfigError
from gfsprune.targets import Budget

__all__ = [
    "ALLOCATORS",
    "Curves",
    "Uniform",
    "WidthAllocator",
    "allowed_widths",
    "check_reachable",
]


def allowed_widths(width: int, round_to: int = 1, item_size: int = 1) -> np.ndarray:
    """The widths a layer of ``width`` channels in items of ``item_size`` may be pruned to:
    the common multiples of ``round_to`` and ``item_size`` below ``width``, and ``width``
    itself.

    Example:
        >>> allowed_widths(20, 8).tolist()
        [8, 16, 20]
        >>> allowed_widths(12, 2, item_size=3).tolist()
        [6, 12]
    """
    step = math.lcm(round_to, item_size)
    return np.array([*range(step, width, step), width])


def check_reachable(cost: CostModel, budget: Budget, *, round_to: int = 1) -> None:
    """Refuse a budget that no choice of allowed widths meets to the nearest step: below the
    cost of the narrowest widths, or so close to the full model that the nearest choice is the
    full model itself. The message names the nearest reachable ratio."""
    name = f"{type(budget).__name__}({budget.ratio})"
    grids = _grids(cost, round_to)
    if all(len(g) == 1 for g in grids):
        raise ConfigError(
            f"round_to={round_to} leaves nothing to prune: no channel layer is wider than "
            f"{round_to} channels (the widest has {int(max(cost.widths))}); use a smaller "
            "round_to."
        )
    narrowest = [np.full(int(w), g[0] / w) for w, g in zip(cost.widths, grids, strict=True)]
    smallest = cost.ratio(narrowest, budget.metric)
    unit = "one channel" if round_to == 1 else f"{round_to} channels (round_to)"
    if budget.ratio < smallest - 1e-9:
        raise ConfigError(
            f"{name} cannot be reached: the layers gfsprune does not prune (ignored ones, the "
            f"classifier) and {unit} per pruned layer already cost {smallest:.4f} of the "
            f"original{_largest_fixed(cost, budget)}; ask for a ratio of at least "
            f"{smallest:.4f}."
        )
    largest = 0.0  # the largest ratio below 1: one layer one step below its full width
    for i, grid in enumerate(grids):
        if len(grid) > 1:
            keep = [np.ones(int(w)) for w in cost.widths]
            keep[i][int(grid[-2]) :] = 0.0
            largest = max(largest, cost.ratio(keep, budget.metric))
    if budget.ratio > (1 + largest) / 2:
        raise ConfigError(
            f"{name} cannot be met to the nearest step: the smallest reduction (one layer "
            f"{'one channel' if round_to == 1 else f'one multiple of {round_to}'} narrower) "
            f"already leaves {largest:.4f} of the original, and keeping every channel prunes "
            f"nothing; ask for a ratio of at most {largest:.4f}."
        )


def _largest_fixed(cost: CostModel, budget: Budget, shown: int = 3) -> str:
    """The modules whose cost (of the budget's metric) no pruned layer changes, the largest
    few with their share of the model's, for a refused budget ("" where the cost model does
    not know them, or none costs 1%)."""
    full = cost.full[budget.metric]
    parts = [
        f"{name or 'the model itself'} {value / full:.0%}"
        for name, value in list(cost.fixed(budget.metric).items())[:shown]
        if value >= 0.01 * full
    ]
    label = type(budget).__name__
    return f" ({label} outside the pruned layers, the largest: {', '.join(parts)})" if parts else ""


def _grids(cost: CostModel, round_to: int) -> list[np.ndarray]:
    """Each layer's :func:`allowed_widths`."""
    return [
        allowed_widths(int(w), round_to, int(s))
        for w, s in zip(cost.widths, cost.sizes, strict=True)
    ]


class WidthAllocator(ABC):
    """Splits a budget into per-layer widths."""

    #: The name ``PruneConfig(allocator=...)`` knows it by.
    name: ClassVar[str]
    #: Whether :meth:`allocate` needs each layer's loss curve (``curves``), measured by a
    #: first pass over the layers before any is pruned (:mod:`gfsprune.core.curves`).
    needs_curves: ClassVar[bool] = False

    @abstractmethod
    def allocate(
        self,
        cost: CostModel,
        budget: Budget,
        selected: Mapping[int, Sequence[int]],
        *,
        round_to: int = 1,
        curves: Sequence[LossCurve] | None = None,
    ) -> list[int]:
        """A width per layer meeting ``budget.ratio`` as closely as the layers allow.

        Args:
            cost: The model's cost model (its layers in selection order).
            budget: The budget.
            selected: Layer index to the channels already kept there (fixed).
            round_to: Open layers take widths from :func:`allowed_widths` with this (and
                their item size, ``cost.sizes``).
            curves: Each layer's loss curve, where :attr:`needs_curves` asks for them.

        Returns:
            A width per layer; for selected layers, the number of kept channels.
        """


def _fit(
    cost: CostModel,
    budget: Budget,
    selected: Mapping[int, Sequence[int]],
    round_to: int,
    base: np.ndarray,
) -> list[int]:
    """Open layers at the same fraction ``t`` of ``base`` widths (the nearest allowed width,
    at most the full one), ``t`` found by bisection on the cost model; then single steps (to
    the next allowed width: one channel or item, or ``round_to`` channels) added or removed,
    first where the rounding went furthest the other way (widest layers first among equals),
    to land as close to the budget as the layers' granularity allows. Steps that stay on
    the near side of the budget go first; one that passes it is taken only when none is
    left, so a layer whose allowed widths are far apart (16 channels with ``round_to=8``)
    keeps its nearest width unless no finer step elsewhere gets closer."""
    full = cost.widths
    fixed = {
        i: np.isin(np.arange(int(full[i])), list(kept)).astype(float)
        for i, kept in selected.items()
    }
    open_layers = [i for i in range(len(full)) if i not in fixed]
    # The keep vectors of all layers concatenated: the fixed ones, and each open layer's
    # share on its channels (built per call without a Python loop over the layers: the
    # single steps below call this thousands of times on densenet121).
    owner = np.repeat(np.arange(len(full)), full.astype(int))
    starts = np.concatenate([[0], np.cumsum(full.astype(int))])
    fixed_flat, is_fixed = np.zeros(owner.size), np.zeros(owner.size, dtype=bool)
    for i, keep in fixed.items():
        fixed_flat[starts[i] : starts[i + 1]] = keep
        is_fixed[starts[i] : starts[i + 1]] = True

    def error(widths: np.ndarray) -> float:
        flat = np.where(is_fixed, fixed_flat, (widths / full)[owner])
        return cost.ratio(flat, budget.metric) - budget.ratio

    grids = _grids(cost, round_to)
    plain = round_to == 1 and bool((cost.sizes == 1).all())

    def widths_at(t: float) -> np.ndarray:
        """The nearest allowed width to ``t * base`` of each open layer."""
        wanted = np.minimum(t * base, full)
        if plain:
            widths = np.clip(np.round(wanted), 1, full)
        else:
            widths = np.array(
                [g[np.abs(g - w).argmin()] for g, w in zip(grids, wanted, strict=True)],
                dtype=float,
            )
        for i, keep in fixed.items():
            widths[i] = keep.sum()
        return widths

    lo, hi = 0.0, float(np.max(full / np.maximum(base, 1e-12)))
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if error(widths_at(mid)) < 0 else (lo, mid)
    widths, share = widths_at(lo), np.minimum(lo * base, full)
    by_width = sorted(open_layers, key=lambda i: -full[i])
    while True:
        signed = error(widths)
        step = -1 if signed > 0 else 1
        moves = []
        for i in by_width:
            index = int(np.searchsorted(grids[i], widths[i])) + step
            if 0 <= index < len(grids[i]):
                # how far the layer's share lies beyond its width in the step's direction,
                # in steps: the layers rounded furthest the other way move first (largest
                # remainder), so no single layer absorbs the whole correction
                gap = abs(grids[i][index] - widths[i])
                moves.append((-step * (share[i] - widths[i]) / gap, i, grids[i][index]))
        passing = None  # the first step that lands closer but past the budget
        for _, i, width in sorted(moves, key=lambda move: move[0]):  # stable: widest first
            trial = widths.copy()
            trial[i] = width
            after = error(trial)
            if abs(after) < abs(signed) - 1e-12:
                if after * signed >= 0:
                    break  # a step that does not pass the budget: taken in this order
                if passing is None:
                    passing = trial
        else:
            if passing is None:
                return [int(w) for w in widths]
            trial = passing
        widths = trial


class Uniform(WidthAllocator):
    """Every layer still to be selected keeps the same fraction of its channels (the nearest
    allowed width), found by bisection on the cost model; then single steps (to the next
    allowed width: one channel or item, or ``round_to`` channels) are added or removed,
    first where the rounding went furthest the other way, to land as close to the budget as
    the layers' granularity allows. The simplest honest baseline."""

    name = "uniform"

    def allocate(self, cost, budget, selected, *, round_to=1, curves=None) -> list[int]:
        return _fit(cost, budget, selected, round_to, cost.widths)


class Curves(WidthAllocator):
    """Widths from the layers' loss curves: the split of the budget whose summed loss
    increases (each layer's curve at its width minus at full width) are lowest.

    Solved once, before any layer is pruned, by greedy descent: from every layer at full
    width, repeatedly narrow the layer whose next step down (about 1/32 of its width, at
    least one allowed step) costs the least loss per unit of the budget it frees, until the
    budget is met. After each pruned layer the open layers keep those widths' proportions
    (scaled together by bisection, as :class:`Uniform` scales full widths) so that the
    budget is still met with the actual picks.

    Attributes:
        steps: Steps a layer's width is cut in, at most (finer is slower to solve).
        schedule: The schedule of the pass that measures the curves (each layer selected
            alone, from no channel to all); ``None``: ``Fast(screen=s)`` with ``s`` the
            smaller of ``Fast.screen`` and the run's ``candidates``, so the pass scores no
            more candidates per step than the run itself, or ``Exact()`` for an objective
            in closed form (:meth:`curve_schedule`).
    """

    name = "curves"
    needs_curves = True

    def __init__(self, steps: int = 32, *, schedule: Schedule | None = None) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(
                f"The 'steps' parameter of Curves must be a positive integer. Got {steps!r} "
                "instead."
            )
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ConfigError(
                f"The 'schedule' parameter of Curves must be a Schedule or None. Got "
                f"{schedule!r} instead."
            )
        self.steps, self.schedule = steps, schedule
        self._solved: tuple[tuple, np.ndarray] | None = None

    def curve_schedule(self, candidates: int | None, *, closed_form: bool = False) -> Schedule:
        """The schedule the curves are measured with, for a run scoring ``candidates`` (a
        ``closed_form`` objective's: its exact greedy path, which it computes anyway)."""
        if self.schedule is not None:
            return self.schedule
        if closed_form:
            return Exact()
        return Fast(screen=min(Fast.screen, candidates or Fast.screen))

    def allocate(self, cost, budget, selected, *, round_to=1, curves=None) -> list[int]:
        if curves is None or len(curves) != len(cost.widths):
            raise ConfigError(
                "The 'curves' allocator needs one loss curve per layer; prune() measures them "
                "when PruneConfig(allocator='curves') is set."
            )
        # By content, not identity: an instance passed in a PruneConfig serves many runs.
        key = (
            budget,
            round_to,
            cost.widths.tobytes(),
            tuple(sorted(cost.full.items())),
            cost.revision,
            tuple((c.widths.tobytes(), c.losses.tobytes()) for c in curves),
        )
        if self._solved is None or self._solved[0] != key:
            self._solved = key, self.solve(cost, budget, round_to, curves)
        return _fit(cost, budget, selected, round_to, self._solved[1])

    def solve(
        self, cost: CostModel, budget: Budget, round_to: int, curves: Sequence[LossCurve]
    ) -> np.ndarray:
        """The widths (all layers open) by greedy descent on loss per unit of budget."""
        full = cost.widths
        grids = _grids(cost, round_to)
        position = [len(g) - 1 for g in grids]  # index into each layer's grid: full width
        stride = [max(1, (len(g) - 1) // self.steps) for g in grids]
        neighbours = cost.neighbours()

        def ratio(pos: Sequence[int]) -> float:
            keep = [np.full(int(w), g[p] / w) for w, g, p in zip(full, grids, pos, strict=True)]
            return cost.ratio(keep, budget.metric)

        def gain(i: int, now: float) -> tuple[float, float, int]:
            """(loss per freed budget, -freed, i) of layer i's next step down; inf if none."""
            if position[i] == 0:
                return math.inf, 0.0, i
            trial = list(position)
            trial[i] = max(0, position[i] - stride[i])
            freed = now - ratio(trial)
            lost = float(curves[i].at(grids[i][trial[i]]) - curves[i].at(grids[i][position[i]]))
            if freed <= 0:
                return math.inf, 0.0, i
            return max(lost, 0.0) / freed, -freed, i

        now = ratio(position)
        gains = [gain(i, now) for i in range(len(full))]
        while now > budget.ratio:
            best = min(gains)
            if best[0] == math.inf:
                break  # every layer at its narrowest: check_reachable refused such budgets
            i = best[2]
            position[i] = max(0, position[i] - stride[i])
            now = ratio(position)
            for j in {i, *neighbours[i]}:
                gains[j] = gain(j, now)
        return np.array([g[p] for g, p in zip(grids, position, strict=True)], dtype=float)


#: The allocators ``PruneConfig(allocator=NAME)`` accepts.
ALLOCATORS: Mapping[str, type[WidthAllocator]] = {a.name: a for a in (Uniform, Curves)}
