"""What to prune to: a MACs, parameter or latency budget, exact widths, or the paper's loss
tolerance.

A target is one small class behind one protocol, :class:`Target`: given the channel layers,
it plans a :class:`Goal` for each layer as selection reaches it. Budgets (:class:`Macs`,
:class:`Params`, :class:`Latency`) name the metric they constrain, and the run's width
planner splits them into widths; :class:`Widths` fixes them; :class:`Tolerance` stops each
layer by its loss. A target may name the cost model the run plans and reports with
(:meth:`Target.cost_model`).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from gfsprune.errors import ConfigError

if TYPE_CHECKING:
    from gfsprune.core.cost import CostFactory

__all__ = [
    "Budget",
    "Goal",
    "Latency",
    "Macs",
    "Params",
    "Target",
    "TargetContext",
    "Tolerance",
    "Widths",
]


@dataclass(frozen=True)
class Goal:
    """How far to select one layer: exactly ``width`` channels, or (``width`` None) until the
    loss is within the relative ``tolerance`` of the layer's loss at full width and the
    count is a multiple of ``multiple_of`` (or all channels)."""

    width: int | None = None
    tolerance: float | None = None
    multiple_of: int = 1


#: ``plan(index, selected)``: the goal of layer ``index`` given the channels kept so far in
#: the layers before it (layer index to kept channels).
GoalPlan = Callable[[int, Mapping[int, Sequence[int]]], Goal]


class TargetContext(Protocol):
    """What a target may ask of the pruning run (the run's width planner,
    :class:`gfsprune.core.planner.WidthPlanner`)."""

    names: Sequence[str]  # the channel layers, in the order selected
    widths: Sequence[int]  # their full widths
    round_to: int  # pruned widths are multiples of this (or full)

    def check_budget(self, budget: Budget) -> None:
        """Refuse a budget no choice of widths can meet, naming the nearest reachable one."""

    def allocate(self, budget: Budget, selected: Mapping[int, Sequence[int]]) -> list[int]:
        """Widths for every layer meeting ``budget``, the ``selected`` layers fixed."""


class Target(ABC):
    """What to prune to: plans each layer's :class:`Goal`."""

    #: Whether the goals are fixed widths (a size target), as backward elimination needs.
    sized: ClassVar[bool] = True
    #: Whether the widths come from the run's allocator (a budget): only then are the
    #: layers' loss curves measured for an allocator that needs them.
    allocated: ClassVar[bool] = False

    @abstractmethod
    def plan(self, context: TargetContext) -> GoalPlan:
        """Check the target against the model (before any weight is touched) and return
        the per-layer goal function."""

    def cost_model(self) -> CostFactory | None:
        """What builds the run's cost model (the metrics a budget is planned on and the
        result records); ``None``: MACs and parameters
        (:class:`~gfsprune.core.compute_cost.ComputeCost`)."""
        return None


def _check_ratio(owner: str, ratio: object) -> None:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not math.isfinite(ratio)
        or not 0 < ratio < 1
    ):
        raise ConfigError(
            f"The 'ratio' parameter of {owner} must be a float in the open interval (0, 1) "
            f"(the fraction of the original to keep). Got {ratio!r} instead."
        )


@dataclass(frozen=True)
class Budget(Target):
    """Keep ``ratio`` of the original cost; subclasses say which cost (:attr:`metric`, a
    metric the run's cost model predicts)."""

    ratio: float
    #: The cost model's metric this budget constrains.
    metric: ClassVar[str]
    allocated: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_ratio(type(self).__name__, self.ratio)

    def plan(self, context: TargetContext) -> GoalPlan:
        context.check_budget(self)
        # Re-split after every layer with the real picks (exact for concatenations).
        return lambda index, selected: Goal(width=context.allocate(self, selected)[index])


@dataclass(frozen=True)
class Macs(Budget):
    """Keep ``ratio`` of the original multiply-accumulates, e.g. ``Macs(0.5)``."""

    metric: ClassVar[str] = "macs"


@dataclass(frozen=True)
class Params(Budget):
    """Keep ``ratio`` of the original parameter count, e.g. ``Params(0.25)``."""

    metric: ClassVar[str] = "params"


@dataclass(frozen=True)
class Latency(Budget):
    """Keep ``ratio`` of the unpruned model's latency on the run's device (the CPU with the
    run's torch threads, or its accelerator) at batch size ``batch``, e.g.
    ``Latency(0.5, batch=64)``; in channels-last memory format with ``channels_last``.

    The widths come from a :class:`~gfsprune.core.latency_cost.LatencyCost` model: the
    network's convolutions, linear layers and norms timed on the device at a few widths
    each (cached on disk), interpolated between them, plus a calibrated rest. The default
    batch of 1 is the latency of one request; reports also give batch 64.
    """

    batch: int = 1
    channels_last: bool = False
    metric: ClassVar[str] = "latency"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(
                "The 'batch' parameter of Latency must be a positive integer (the batch size "
                f"the latency is timed at). Got {self.batch!r} instead."
            )
        if not isinstance(self.channels_last, bool):
            raise ConfigError(
                "The 'channels_last' parameter of Latency must be True or False. Got "
                f"{self.channels_last!r} instead."
            )

    def cost_model(self) -> CostFactory:
        from gfsprune.core.latency_cost import LatencyCost  # the library's core imports this

        return functools.partial(LatencyCost, batch=self.batch, channels_last=self.channels_last)


@dataclass(frozen=True)
class Tolerance(Target):
    """The paper's rule: per layer, add channels until the loss is within ``eps`` (relative)
    of the layer's starting loss, e.g. ``Tolerance(0.02)``."""

    eps: float
    sized: ClassVar[bool] = False

    def __post_init__(self) -> None:
        eps = self.eps
        if (
            isinstance(eps, bool)
            or not isinstance(eps, int | float)
            or not math.isfinite(eps)
            or not eps >= 0
        ):
            raise ConfigError(
                "The 'eps' parameter of Tolerance must be a non-negative float (a relative "
                f"loss increase, e.g. 0.02). Got {eps!r} instead."
            )

    def plan(self, context: TargetContext) -> GoalPlan:
        goal = Goal(tolerance=float(self.eps), multiple_of=context.round_to)
        return lambda index, selected: goal


@dataclass(frozen=True)
class Widths(Target):
    """Keep exactly ``widths[name]`` channels of each named channel layer (named by its root
    module, as in ``PruneResult.plan``); layers not named stay at full width. Reuses an
    architecture, e.g. to compare channel choices at the widths greedy selection chose."""

    widths: Mapping[str, int]

    def __post_init__(self) -> None:
        if not isinstance(self.widths, Mapping):
            raise ConfigError(
                "The 'widths' parameter of Widths must map layer names to positive integers. "
                f"Got {self.widths!r} instead."
            )
        bad = {
            k: v
            for k, v in self.widths.items()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v <= 0
        }
        if bad or not self.widths:
            raise ConfigError(
                "The 'widths' parameter of Widths must map layer names to positive integers "
                f"and name at least one layer. Got {bad or dict(self.widths)!r} instead."
            )

    def plan(self, context: TargetContext) -> GoalPlan:
        full = dict(zip(context.names, context.widths, strict=True))
        unknown = sorted(set(self.widths) - set(full))
        if unknown:
            raise ConfigError(
                f"Widths names layers {unknown[:5]} that are not prunable channel layers of "
                f"this model; its layers are {sorted(full)[:8]}..."
            )
        too_wide = {n: w for n, w in self.widths.items() if w > full[n]}
        if too_wide:
            raise ConfigError(
                f"Widths asks for more channels than these layers have: {too_wide}; the "
                f"layers' widths are { {n: full[n] for n in too_wide} }."
            )
        widths = [self.widths.get(n, w) for n, w in zip(context.names, context.widths, strict=True)]
        return lambda index, selected: Goal(width=widths[index])
