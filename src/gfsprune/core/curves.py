"""Loss curves: each layer's loss against its width, the other layers at full width.

Greedy forward selection already records the loss after every added channel; run on one
layer alone, from no channel to all of them, it gives that layer's loss-versus-width curve,
the sensitivity the :class:`~gfsprune.core.allocate.Curves` allocator splits a budget by
(issue 12). The pass uses the allocator's schedule (by default a fast one: tens of steps per
layer, not hundreds): the curve is an estimate for the split, the channels themselves are
chosen afterwards by the run's own schedule, layer by layer, on top of the layers already
pruned. The value recorded is the objective's held-out value
(:meth:`~gfsprune.scoring.LayerObjective.held_out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from gfsprune.core.schedules import Schedule
from gfsprune.core.strategies import Forward, LayerSearch
from gfsprune.scoring import LayerObjective
from gfsprune.targets import Goal

__all__ = ["LossCurve", "measure_curve"]


@dataclass(frozen=True)
class LossCurve:
    """One layer's loss on fixed held-out batches against its width in channels.

    Attributes:
        widths: Measured widths, increasing, the last the full width.
        losses: The loss at each, with the layer's greedy choice of that many channels.
    """

    widths: np.ndarray
    losses: np.ndarray

    def __post_init__(self) -> None:
        if len(self.widths) == 0 or len(self.widths) != len(self.losses):
            raise ValueError("a loss curve needs one loss per width, and at least one")

    def at(self, widths: np.ndarray | float) -> np.ndarray:
        """The loss at ``widths`` (linear between measured points; below the narrowest,
        the narrowest's). Made non-increasing in the width first: a greedy choice of more
        channels could stop where a smaller one did, so it is never worse."""
        envelope = np.minimum.accumulate(self.losses)
        return np.interp(widths, self.widths, envelope)


class _Recorder:
    """The monitor of a curve pass: the held-out value after each greedy step, by width."""

    def __init__(self, objective: LayerObjective) -> None:
        self.objective = objective
        self.points: list[tuple[int, float]] = []

    def __call__(self, selected: Sequence[int]) -> float:
        value = self.objective.held_out(selected)
        self.points.append((len(self.objective.layer.channels(selected)), value))
        return value


def measure_curve(
    objective: LayerObjective,
    *,
    schedule: Schedule,
    candidates: int | None,
    tie: float,
    seed: int,
    bar: tqdm,
) -> LossCurve:
    """The loss curve of ``objective``'s layer: greedy forward selection from no item to all
    of them, the held-out value recorded after every step (the masks are left untouched, so
    every other layer stays as it is while one is measured)."""
    recorder = _Recorder(objective)
    search = LayerSearch(objective, schedule, candidates, tie, seed, bar, monitor=recorder)
    try:
        Forward().choose(search, Goal(width=objective.layer.n_items))
    finally:
        bar.close()
    widths, losses = zip(*recorder.points, strict=True)
    return LossCurve(np.array(widths, dtype=float), np.array(losses))
