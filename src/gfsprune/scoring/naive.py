"""The reference evaluator: one masked forward pass of the whole network per candidate."""

from __future__ import annotations

from gfsprune.scoring.base import Evaluator

__all__ = ["NaiveEvaluator"]


class NaiveEvaluator(Evaluator):
    """One full forward pass per candidate (the official code's cost)."""

    def __call__(self, inputs, targets, layer, keep):
        return self._one_by_one(self.model, inputs, targets, layer, keep)
