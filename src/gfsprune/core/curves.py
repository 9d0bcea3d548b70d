"""Loss curves: each layer's loss against its width, the other layers at full width.

Greedy forward selection already records the loss after every added channel; run on one
layer alone, from no channel to all of them, it gives that layer's loss-versus-width curve,
the sensitivity the :class:`~gfsprune.core.allocate.Curves` allocator splits a budget by
(issue 12). The pass uses a fast schedule (tens of steps per layer, not hundreds): the curve
is an estimate for the split, the channels themselves are chosen afterwards by the run's own
schedule, layer by layer, on top of the layers already pruned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gfsprune.core.strategies import Forward, LayerSearch
from gfsprune.targets import Goal

__all__ = ["LossCurve", "measure_curves"]


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


def measure_curves(searches: Iterable[LayerSearch]) -> list[LossCurve]:
    """The loss curve of each search's layer: greedy forward selection from no item to all
    of them, the held-out loss recorded after every step (its masks are left untouched, so
    every other layer stays at full width while one is measured)."""
    curves = []
    for search in searches:
        layer = search.layer
        points: list[tuple[int, float]] = []

        def record(selected: list[int], search: LayerSearch = search, points=points) -> float:
            loss = search.held_out_loss(selected)
            points.append((len(search.layer.channels(selected)), loss))
            return loss

        search.monitor = record
        try:
            Forward().choose(search, Goal(width=layer.n_items))
        finally:
            search.bar.close()
        widths, losses = zip(*points, strict=True)
        curves.append(LossCurve(np.array(widths, dtype=float), np.array(losses)))
    return curves
