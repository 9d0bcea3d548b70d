"""The width planner: how a target becomes each layer's goal, re-planned after every layer.

One object owns what planning needs: the cost model, the width allocator, the layers' loss
curves (where the allocator needs them and the target is a budget), and ``round_to``. A target
plans through it (it is the :class:`~gfsprune.targets.TargetContext`); ``prune`` asks it for
each layer's goal with the choices made so far, so a budget is re-split with the real picks.

Where the cost model's predictions are estimates (a latency), the planner closes the loop on
the measured cost: before checking a budget it has the narrowest model measured (so that a
budget this device cannot meet is refused with the measured nearest ratio), and at the first
plan it has the planned model measured, the cost model corrected with that measurement
(:meth:`~gfsprune.core.cost.CostModel.calibrate`) and the widths planned again, up to
:data:`LOOPS` times, until the measured cost is within :data:`CLOSE` of the budget. The
widths kept are those of a measured plan, never a further unmeasured one: the first within
:data:`CLOSE`, else the largest at most :data:`CLOSE` over the budget, else the cheapest
measured, with a warning where it is at most :data:`REFUSE` over the budget. More than that
over is refused, naming the cheapest measured ratio: latency is not monotone in width at the
narrow end (kernels take other paths at one channel), so the narrowest model alone does not
show what a useful plan can reach.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from gfsprune.core.allocate import WidthAllocator, allowed_widths, check_reachable
from gfsprune.core.cost import CostModel
from gfsprune.core.curves import LossCurve
from gfsprune.errors import ConfigError, ModelError
from gfsprune.surgery import ChannelLayer
from gfsprune.targets import Budget, Goal, GoalPlan, Target

__all__ = ["CLOSE", "LOOPS", "REFUSE", "WidthPlanner"]

_log = logging.getLogger(__name__)

#: Planned models measured whole, at most, before the best of them is kept.
LOOPS = 5
#: How close (relative) the measured cost of a plan must come to the budget to stop early.
CLOSE = 0.02
#: A budget whose cheapest measured plan is more than this (relative) over it is refused.
REFUSE = 0.1


class WidthPlanner:
    """Plans the layers' widths for one run (:class:`~gfsprune.targets.TargetContext`).

    Attributes:
        names: The channel layers, in the order selected.
        widths: Their full widths.
        round_to: Pruned widths are multiples of this (or full).
        cost: The run's cost model.
        allocator: Splits a budget into widths.
    """

    def __init__(
        self,
        layers: Sequence[ChannelLayer],
        cost: CostModel,
        allocator: WidthAllocator,
        round_to: int,
    ) -> None:
        self.names = [layer.name for layer in layers]
        self.widths = [layer.width for layer in layers]
        self._sizes = [layer.item_size for layer in layers]
        self.round_to = round_to
        self.cost, self.allocator = cost, allocator
        self._curves: list[LossCurve] | None = None
        self._goals: GoalPlan | None = None
        self._closed: dict[Budget, list[int] | None] = {}

    def start(self, target: Target) -> None:
        """Check ``target`` against the model (before any weight is touched or batch drawn)
        and keep its per-layer goal function."""
        self._goals = target.plan(self)

    @staticmethod
    def needs_curves(target: Target, allocator: WidthAllocator) -> bool:
        """Whether a run to ``target`` measures the layers' loss curves: only a budget split
        by an allocator that reads them (never fixed widths or a tolerance)."""
        return target.allocated and allocator.needs_curves

    def use_curves(self, curves: Sequence[LossCurve]) -> None:
        """The layers' loss curves, measured before any layer is pruned."""
        self._curves = list(curves)

    def goal(self, index: int, selected: Mapping[int, Sequence[int]]) -> Goal:
        """Layer ``index``'s goal (in channels), given the channels ``selected`` so far."""
        assert self._goals is not None, "start() plans the target first"
        return self._goals(index, selected)

    def check_budget(self, budget: Budget) -> None:
        grids = [
            allowed_widths(w, self.round_to, s)
            for w, s in zip(self.widths, self._sizes, strict=True)
        ]
        self.cost.calibrate([int(g[0]) for g in grids])  # the narrowest, where estimated
        check_reachable(self.cost, budget, round_to=self.round_to)

    def allocate(self, budget: Budget, selected: Mapping[int, Sequence[int]]) -> list[int]:
        if budget not in self._closed:
            self._closed[budget] = self._close(budget, selected)
        kept = self._closed[budget]
        if kept is not None and all(len(c) == kept[i] for i, c in selected.items()):
            return kept  # the measured plan, while the selection follows it
        return self._allocate(budget, selected)

    def _close(self, budget: Budget, selected: Mapping[int, Sequence[int]]) -> list[int] | None:
        """The widths of the best measured plan for ``budget`` (None where the cost model's
        predictions are exact and nothing is measured)."""
        tried: list[tuple[float, list[int]]] = []
        for _ in range(LOOPS):
            widths = self._allocate(budget, selected)
            measured = self.cost.calibrate(widths)
            if budget.metric not in measured:
                return None  # exact predictions: nothing to close
            tried.append((measured[budget.metric], widths))
            if abs(tried[-1][0] / budget.ratio - 1) <= CLOSE:
                return widths
        within = [t for t in tried if t[0] <= budget.ratio * (1 + CLOSE)]
        if within:
            return max(within)[1]
        share, widths = min(tried)
        name = f"{type(budget).__name__}({budget.ratio})"
        shares = ", ".join(f"{t[0]:.3f}" for t in tried)
        if share > budget.ratio * (1 + REFUSE):
            raise ConfigError(
                f"{name} cannot be met on this device: the {len(tried)} planned models "
                f"measured whole kept {shares} of the unpruned model's {budget.metric} "
                "(narrower layers stop saving it: per-layer overheads remain); ask for a "
                f"ratio of at least {share:.3f}."
            )
        _log.warning(
            "%s: no planned model measured within %.0f%% of the budget (%s); keeping the "
            "cheapest, at %.3f.",
            name,
            100 * CLOSE,
            shares,
            share,
        )
        return widths

    def _allocate(self, budget: Budget, selected: Mapping[int, Sequence[int]]) -> list[int]:
        extra = {"curves": self._curves} if self.allocator.needs_curves else {}
        widths = self.allocator.allocate(
            self.cost, budget, selected, round_to=self.round_to, **extra
        )
        for i, (width, full, size) in enumerate(zip(widths, self.widths, self._sizes, strict=True)):
            if i not in selected and width not in allowed_widths(full, self.round_to, size):
                raise ModelError(
                    f"The {self.allocator.name!r} allocator gave layer '{self.names[i]}' "
                    f"{width} of {full} channels, not a multiple of round_to={self.round_to} "
                    f"and of its item size {size} (or the full width); fix the allocator."
                )
        return widths
