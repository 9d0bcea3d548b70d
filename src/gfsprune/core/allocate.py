"""Width allocators: how a MACs or parameter budget becomes per-layer widths.

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
from gfsprune.errors import ConfigError
from gfsprune.targets import Budget

__all__ = ["ALLOCATORS", "Uniform", "WidthAllocator", "allowed_widths", "check_reachable"]


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
    smallest = cost.ratio(narrowest, budget)
    unit = "one channel" if round_to == 1 else f"{round_to} channels (round_to)"
    if budget.ratio < smallest - 1e-9:
        raise ConfigError(
            f"{name} cannot be reached: the layers gfsprune does not prune (ignored ones, the "
            f"classifier) and {unit} per pruned layer already cost {smallest:.4f} of the "
            f"original; ask for a ratio of at least {smallest:.4f}."
        )
    largest = 0.0  # the largest ratio below 1: one layer one step below its full width
    for i, grid in enumerate(grids):
        if len(grid) > 1:
            keep = [np.ones(int(w)) for w in cost.widths]
            keep[i][int(grid[-2]) :] = 0.0
            largest = max(largest, cost.ratio(keep, budget))
    if budget.ratio > (1 + largest) / 2:
        raise ConfigError(
            f"{name} cannot be met to the nearest step: the smallest reduction (one layer "
            f"{'one channel' if round_to == 1 else f'one multiple of {round_to}'} narrower) "
            f"already leaves {largest:.4f} of the original, and keeping every channel prunes "
            f"nothing; ask for a ratio of at most {largest:.4f}."
        )


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

    @abstractmethod
    def allocate(
        self,
        cost: CostModel,
        budget: Budget,
        selected: Mapping[int, Sequence[int]],
        *,
        round_to: int = 1,
    ) -> list[int]:
        """A width per layer meeting ``budget.ratio`` as closely as the layers allow.

        Args:
            cost: The model's cost model (its layers in selection order).
            budget: The budget.
            selected: Layer index to the channels already kept there (fixed).
            round_to: Open layers take widths from :func:`allowed_widths` with this (and
                their item size, ``cost.sizes``).

        Returns:
            A width per layer; for selected layers, the number of kept channels.
        """


class Uniform(WidthAllocator):
    """Every layer still to be selected keeps the same fraction of its channels (the nearest
    allowed width), found by bisection on the cost model; then single steps (to the next
    allowed width: one channel or item, or ``round_to`` channels) are added or removed,
    widest layers first, to land as close to the budget as the layers' granularity allows.
    The simplest honest baseline."""

    name = "uniform"

    def allocate(
        self,
        cost: CostModel,
        budget: Budget,
        selected: Mapping[int, Sequence[int]],
        *,
        round_to: int = 1,
    ) -> list[int]:
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
            return cost.ratio(flat, budget) - budget.ratio

        grids = _grids(cost, round_to)

        def widths_at(share: float) -> np.ndarray:
            """The nearest allowed width to ``share`` of each open layer."""
            if round_to == 1 and (cost.sizes == 1).all():
                widths = np.clip(np.round(share * full), 1, full)
            else:
                widths = np.array(
                    [g[np.abs(g - share * w).argmin()] for g, w in zip(grids, full, strict=True)],
                    dtype=float,
                )
            for i, keep in fixed.items():
                widths[i] = keep.sum()
            return widths

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if error(widths_at(mid)) < 0 else (lo, mid)
        widths = widths_at(lo)
        # Single steps on the allowed widths toward the budget, widest layers first.
        by_width = sorted(open_layers, key=lambda i: -full[i])
        current = abs(error(widths))
        while True:
            step = -1 if error(widths) > 0 else 1
            for i in by_width:
                index = int(np.searchsorted(grids[i], widths[i])) + step
                if not 0 <= index < len(grids[i]):
                    continue
                trial = widths.copy()
                trial[i] = grids[i][index]
                if abs(error(trial)) < current - 1e-12:
                    widths, current = trial, abs(error(trial))
                    break
            else:
                return [int(w) for w in widths]


#: The allocators ``PruneConfig(allocator=NAME)`` accepts.
ALLOCATORS: Mapping[str, type[WidthAllocator]] = {Uniform.name: Uniform}
