"""The reference evaluator: one masked forward pass of the whole network per candidate."""

from __future__ import annotations

import torch

from gfsprune._inputs import run_model
from gfsprune.scoring.base import Evaluator

__all__ = ["NaiveEvaluator"]


class NaiveEvaluator(Evaluator):
    """One full forward pass per candidate (the official code's cost)."""

    @torch.no_grad()
    def __call__(self, inputs, targets, layer, keep):
        losses = []
        for row in keep:
            with self.masks.candidates(layer, row[None]):
                losses.append(float(self.loss_fn(run_model(self.model, inputs), targets)))
        return losses
