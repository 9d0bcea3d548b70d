"""Width allocators: how a MACs or parameter budget becomes per-layer widths.

An allocator is one small class behind :class:`WidthAllocator`. ``prune`` asks it again after
every layer, with that layer's actual picks fixed, so the budget is met even where *which*
channels are kept changes the cost (a group joined by a concatenation keeps more or fewer
channels of each concatenated part). Greedy selection decides which channels fill the widths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from gfsprune.core.cost import CostModel
from gfsprune.targets import Budget

__all__ = ["ALLOCATORS", "Uniform", "WidthAllocator"]


class WidthAllocator(ABC):
    """Splits a budget into per-layer widths."""

    #: The name ``PruneConfig(allocator=...)`` knows it by.
    name: ClassVar[str]

    @abstractmethod
    def allocate(
        self, cost: CostModel, budget: Budget, selected: Mapping[int, Sequence[int]]
    ) -> list[int]:
        """A width per layer meeting ``budget.ratio`` as closely as the layers allow.

        Args:
            cost: The model's cost model (its layers in selection order).
            budget: The budget.
            selected: Layer index to the channels already kept there (fixed).

        Returns:
            A width per layer; for selected layers, the number of kept channels.
        """


class Uniform(WidthAllocator):
    """Every layer still to be selected keeps the same fraction of its channels (rounded, at
    least one), found by bisection on the cost model; then single channels are added or
    removed, widest layers first, to land as close to the budget as the layers' granularity
    allows. The simplest honest baseline."""

    name = "uniform"

    def allocate(
        self, cost: CostModel, budget: Budget, selected: Mapping[int, Sequence[int]]
    ) -> list[int]:
        full = cost.widths
        fixed = {
            i: np.isin(np.arange(int(full[i])), list(kept)).astype(float)
            for i, kept in selected.items()
        }
        open_layers = [i for i in range(len(full)) if i not in fixed]

        def keep_of(widths: np.ndarray) -> list[np.ndarray]:
            return [
                fixed[i] if i in fixed else np.full(int(full[i]), widths[i] / full[i])
                for i in range(len(full))
            ]

        def error(widths: np.ndarray) -> float:
            return cost.ratio(keep_of(widths), budget) - budget.ratio

        def widths_at(share: float) -> np.ndarray:
            widths = np.clip(np.round(share * full), 1, full)
            for i, keep in fixed.items():
                widths[i] = keep.sum()
            return widths

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if error(widths_at(mid)) < 0 else (lo, mid)
        widths = widths_at(lo)
        # Single-channel moves toward the budget, widest layers first.
        by_width = sorted(open_layers, key=lambda i: -full[i])
        current = abs(error(widths))
        while True:
            step = -1 if error(widths) > 0 else 1
            for i in by_width:
                trial = widths.copy()
                trial[i] += step
                if 1 <= trial[i] <= full[i] and abs(error(trial)) < current - 1e-12:
                    widths, current = trial, abs(error(trial))
                    break
            else:
                return [int(w) for w in widths]


#: The allocators ``PruneConfig(allocator=NAME)`` accepts.
ALLOCATORS: Mapping[str, type[WidthAllocator]] = {Uniform.name: Uniform}
