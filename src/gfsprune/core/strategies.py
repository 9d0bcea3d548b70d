"""Selection strategies: how the items of one layer are chosen by loss.

A strategy is one small class behind :class:`Strategy`. It gets a :class:`LayerSearch` (the
layer, its objective, the schedule and sampling options) and the layer's
:class:`~gfsprune.targets.Goal` counted in items (channels, or heads and grouped-convolution
offsets: :class:`~gfsprune.surgery.ChannelLayer`), and returns the kept items.
:func:`select_layer` wraps it: it keeps every concatenated part non-empty, leaves the layer's
masks at the choice, so that the next layer is selected on top of it, and returns the kept
channels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from tqdm.auto import tqdm

from gfsprune.core.schedules import Schedule
from gfsprune.core.select import ScoreFn, backward_eliminate, forward_select, rank
from gfsprune.scoring import LayerObjective
from gfsprune.surgery import ChannelLayer, Masks
from gfsprune.targets import Goal

__all__ = ["STRATEGIES", "Backward", "Forward", "LayerChoice", "LayerSearch", "Strategy"]


@dataclass(frozen=True)
class LayerChoice:
    """What a strategy chose for one layer.

    Attributes:
        kept: The kept items (channels, from :func:`select_layer`): in the order picked for
            forward selection, ascending for backward elimination.
        losses: The loss after each pick (each removal, for backward elimination), scored
            on that step's mini-batch, or on the held-out batches under a tolerance goal.
        reference: The layer's loss at full width on the held-out batches, where a
            tolerance goal measured one.
    """

    kept: list[int]
    losses: list[float]
    reference: float | None = None


@dataclass
class LayerSearch:
    """Everything a strategy needs to choose the items of one layer.

    Attributes:
        objective: What the layer's selection minimises (its layer is ``objective.layer``).
        schedule: How many candidates each step scores and how many it adds.
        candidates: Items scored per step (a seeded random subset), ``None`` for all.
        tie: Relative difference under which candidates are tied (lowest index wins).
        seed: Seeds the candidate sampling.
        bar: Progress bar, advanced after every pick.
        monitor: ``monitor(items)`` gives the value recorded after each forward step in
            place of the step's scores (default: the held-out value under a tolerance goal).
    """

    objective: LayerObjective
    schedule: Schedule
    candidates: int | None
    tie: float
    seed: int
    bar: tqdm
    monitor: Callable[[list[int]], float] | None = None

    @property
    def layer(self) -> ChannelLayer:
        """The channel layer."""
        return self.objective.layer

    def adding(self, precise: bool = False) -> ScoreFn:
        """The engine's ``score(selected, candidates)``: each candidate added to the set."""
        return self.objective.refine_added if precise else self.objective.score_added

    def on_pick(self, step: int, item: int, loss: float) -> None:
        """Advance the progress bar (the engine's ``callback``)."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)


class Strategy(ABC):
    """Chooses the items of one layer."""

    #: The name ``PruneConfig(strategy=...)`` knows it by.
    name: ClassVar[str]
    #: Whether it needs a fixed width per layer (a size target), not a tolerance.
    needs_width: ClassVar[bool] = False
    #: Whether it follows ``PruneConfig.schedule`` (otherwise only the exact one is valid).
    uses_schedule: ClassVar[bool] = False

    @abstractmethod
    def choose(self, search: LayerSearch, goal: Goal) -> LayerChoice:
        """The items to keep in ``search.layer`` for ``goal`` (counted in items)."""


class Forward(Strategy):
    """Greedy forward selection (the paper): from no item, add the candidate whose
    addition gives the lowest loss, until the goal's width or tolerance is reached."""

    name = "forward"
    uses_schedule = True

    def choose(self, search: LayerSearch, goal: Goal) -> LayerChoice:
        reference = None
        tolerance = None
        if goal.tolerance is not None:
            reference = search.objective.held_out(range(search.layer.n_items))
            tolerance = goal.tolerance * abs(reference)
        schedule = search.schedule

        def screen(selected: list[int], allowed: list[int]) -> list[int] | None:
            count = schedule.screened(len(selected))
            return None if count is None else search.objective.screen(selected, allowed, count)

        selection = forward_select(
            search.adding(),
            search.layer.n_items,
            steps=goal.width,
            tolerance=tolerance,
            reference=reference,
            candidates=search.candidates,
            seed=search.seed,
            tie=search.tie,
            refine=search.adding(precise=True),
            multiple_of=goal.multiple_of,
            picks=schedule.picks,
            rescore=schedule.rescored(),
            screen=screen,
            monitor=search.monitor
            or (search.objective.held_out if goal.tolerance is not None else None),
            callback=search.on_pick,
        )
        return LayerChoice(list(selection.order), list(selection.losses), reference)


class Backward(Strategy):
    """Greedy backward elimination by loss (the approach the paper argues against): from all
    items, remove the candidate whose removal gives the lowest loss, down to the width."""

    name = "backward"
    needs_width = True

    def choose(self, search: LayerSearch, goal: Goal) -> LayerChoice:
        size = search.layer.n_items
        assert goal.width is not None  # prune() refuses width-free targets up front
        if goal.width == size:
            return LayerChoice(list(range(size)), [])

        def removing(fn):
            return lambda remaining, cands: fn([[i for i in remaining if i != c] for c in cands])

        selection = backward_eliminate(
            removing(search.objective.score),
            size,
            steps=size - goal.width,
            candidates=search.candidates,
            seed=search.seed,
            tie=search.tie,
            refine=removing(search.objective.refine),
            callback=search.on_pick,
        )
        kept = sorted(set(range(size)) - set(selection.order))
        return LayerChoice(kept, list(selection.losses))


#: The strategies ``PruneConfig(strategy=NAME)`` accepts.
STRATEGIES: Mapping[str, type[Strategy]] = {s.name: s for s in (Forward, Backward)}


def select_layer(
    strategy: Strategy, search: LayerSearch, goal: Goal, masks: Masks
) -> tuple[LayerChoice, float]:
    """Choose the items of ``search.layer`` by ``strategy`` (``goal`` counted in items) and
    leave its masks at the choice. Returns the choice, its kept items given as their
    channels, and the scale folded into the kept channels."""
    layer = search.layer
    try:
        choice = strategy.choose(search, goal)
    finally:
        search.bar.close()
    kept = list(choice.kept)
    for segment in (layer.items_of(channels) for channels in layer.segments):
        if not set(segment) & set(kept):
            # A concatenated part left empty would leave its module with no output channel:
            # add that part's best item (one more greedy step, restricted to the part).
            ((best, _),) = rank(
                search.adding(),
                kept,
                list(segment),
                tie=search.tie,
                count=1,
                refine=search.adding(precise=True),
            )
            kept.append(best)
    channels = layer.channels(kept)
    scale = search.objective.scale(channels)
    masks.set(layer, channels, scale)
    return LayerChoice(channels, choice.losses, choice.reference), scale
