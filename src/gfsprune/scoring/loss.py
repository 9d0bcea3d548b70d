"""The network's loss as the objective: each item set scored by the loss of the whole network
on a fresh mini-batch per greedy step (the paper's rule), through an evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from gfsprune.errors import ConfigError
from gfsprune.scoring.base import Evaluator
from gfsprune.scoring.batched import BatchedEvaluator
from gfsprune.scoring.naive import NaiveEvaluator
from gfsprune.scoring.objective import BoundObjective, LayerObjective, Objective, SelectionRun
from gfsprune.scoring.sharded import make_evaluator
from gfsprune.surgery import ChannelLayer

__all__ = ["EVALUATORS", "NetworkLoss"]

#: The evaluators ``NetworkLoss(evaluator=NAME)`` accepts.
EVALUATORS: dict[str, type[Evaluator]] = {"naive": NaiveEvaluator, "batched": BatchedEvaluator}


@dataclass(frozen=True)
class NetworkLoss(Objective):
    """The loss of the whole network, each greedy step on the next mini-batch.

    Attributes:
        evaluator: How candidates are scored: ``"batched"`` (fast: cached prefix, stacked
            candidates), ``"naive"`` (one forward pass per candidate, the reference), or an
            :class:`~gfsprune.scoring.Evaluator` subclass. Both built-ins give the same losses
            up to float rounding, so the evaluator does not change the plan.
    """

    name: ClassVar[str] = "loss"
    evaluator: str | type[Evaluator] = "batched"

    def __post_init__(self) -> None:
        self.evaluator_class()

    def evaluator_class(self) -> type[Evaluator]:
        """The evaluator class."""
        value = self.evaluator
        if isinstance(value, type) and issubclass(value, Evaluator):
            return value
        if isinstance(value, str) and value in EVALUATORS:
            return EVALUATORS[value]
        raise ConfigError(
            f"The 'evaluator' option of NetworkLoss must be one of {sorted(EVALUATORS)} or an "
            f"Evaluator subclass. Got {value!r} instead."
        )

    def settings(self) -> str:
        return self.name  # every evaluator gives the same picks

    def bind(self, run: SelectionRun) -> _BoundLoss:
        evaluator = make_evaluator(
            self.evaluator_class(), run.model, run.masks, run.loss_fn, graph=run.graph
        )
        return _BoundLoss(evaluator, run.rescale)


class _BoundLoss(BoundObjective):
    def __init__(self, evaluator: Evaluator, rescale: bool) -> None:
        self.evaluator, self.rescale = evaluator, rescale

    def layer(self, layer, *, draw, held_out) -> _LayerLoss:
        return _LayerLoss(layer, self.evaluator, draw, held_out, self.rescale)

    def reset(self) -> None:
        self.evaluator.reset()


class _LayerLoss(LayerObjective):
    """One layer's network loss: each :meth:`score` draws the next mini-batch, except the
    one after a :meth:`screen`, which scores on the batch the screen drew."""

    def __init__(
        self,
        layer: ChannelLayer,
        evaluator: Evaluator,
        draw: Callable[[], tuple],
        held_out: Sequence[tuple],
        rescale: bool,
    ) -> None:
        self.layer, self.evaluator, self._draw = layer, evaluator, draw
        self._held_out, self._rescale = held_out, rescale
        self._pending: tuple | None = None  # the batch a screen drew, for the next score
        self._step: tuple | None = None  # the batch of the last score

    def factors(self, sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """The ``(K, width)`` channel factors of ``K`` item sets."""
        size = self.layer.width
        keep = torch.zeros(len(sets), size)
        for row, items in enumerate(sets):
            channels = self.layer.channels(items)
            if channels:
                keep[row, channels] = size / len(channels) if self._rescale else 1.0
        return keep

    def _batch(self, *, hold: bool = False) -> tuple:
        """The step's mini-batch: the one a screen drew (``hold``) or the next one."""
        batch = self._pending if self._pending is not None else self._draw()
        self._pending = batch if hold else None
        return batch

    def score(self, sets):
        inputs, targets = self._step = self._batch()
        return self.evaluator(inputs, targets, self.layer, self.factors(sets))

    def refine(self, sets):
        assert self._step is not None, "refine() follows score() on the same step"
        inputs, targets = self._step
        return self.evaluator.precise(inputs, targets, self.layer, self.factors(sets))

    def screen(self, selected, allowed, count):
        """Adding item ``c`` changes its channels' factors from 0 and, with the rescale,
        every kept channel's factor by the same amount: only ``g_c``, the sum of the loss's
        derivatives with respect to ``c``'s channel factors, differs between candidates."""
        inputs, targets = self._batch(hold=True)
        grad = self.evaluator.gradient(inputs, targets, self.layer, self.factors([selected])[0])
        per_item = grad[self.layer.item_index].sum(1)  # (items,)
        return sorted(allowed, key=lambda c: (float(per_item[c]), c))[:count]

    def held_out(self, items):
        keep = self.factors([items])
        losses = [self.evaluator(x, y, self.layer, keep)[0] for x, y in self._held_out]
        return sum(losses) / len(losses)

    def scale(self, channels):
        return self.layer.width / len(channels) if self._rescale else 1.0
