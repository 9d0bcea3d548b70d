"""Candidate evaluators: the loss of the network for several channel sets of one layer.

``naive`` runs the whole network once per candidate, as the official code does; it is the
reference. ``batched`` stacks the candidates along the batch dimension (chunked under a
memory cap) and reuses the activations computed before the layer's first consumer, so only
the rest of the network runs once per candidate. Both give the same losses up to float
rounding, and so the same picks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gfsprune.surgery import ChannelLayer, Masks, run_model

__all__ = ["Evaluator", "make_evaluator", "EVALUATORS"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Evaluator(ABC):
    """Scores channel sets of one layer on one mini-batch.

    Attributes:
        model: The network in eval mode, with ``masks`` installed.
        masks: The channel masks of every layer.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch.
        max_batch: Cap on samples per forward pass (candidates x batch) for ``batched``.
    """

    model: nn.Module
    masks: Masks
    loss_fn: LossFn
    max_batch: int = 4096

    @abstractmethod
    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, layer: ChannelLayer, keep: torch.Tensor
    ) -> list[float]:
        """The loss for each row of ``keep`` (``(K, width)`` channel factors)."""


class NaiveEvaluator(Evaluator):
    """One full forward pass per candidate (the official code's cost)."""

    @torch.no_grad()
    def __call__(self, inputs, targets, layer, keep):
        losses = []
        for row in keep:
            with self.masks.candidates(layer, row[None]):
                losses.append(float(self.loss_fn(run_model(self.model, inputs), targets)))
        return losses


class BatchedEvaluator(Evaluator):
    """Candidates stacked along the batch dimension, in chunks of at most ``max_batch``."""

    @torch.inference_mode()
    def __call__(self, inputs, targets, layer, keep):
        batch = targets.shape[0]
        chunk = max(1, self.max_batch // batch)
        losses: list[float] = []
        for start in range(0, keep.shape[0], chunk):
            rows = keep[start : start + chunk]
            k = rows.shape[0]
            stacked = _repeat(inputs, k)
            with self.masks.candidates(layer, rows):
                out = run_model(self.model, stacked)
            for i in range(k):
                part = out[i * batch : (i + 1) * batch]
                losses.append(float(self.loss_fn(part, targets)))
        return losses


def _repeat(inputs: object, k: int) -> object:
    """Tile every tensor of ``inputs`` ``k`` times along the batch dimension."""
    if isinstance(inputs, torch.Tensor):
        return inputs.repeat(k, *([1] * (inputs.dim() - 1)))
    if isinstance(inputs, dict):
        return {key: _repeat(v, k) for key, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_repeat(v, k) for v in inputs)
    return inputs


EVALUATORS: dict[str, type[Evaluator]] = {"naive": NaiveEvaluator, "batched": BatchedEvaluator}


def make_evaluator(name: str, model: nn.Module, masks: Masks, loss_fn: LossFn) -> Evaluator:
    """Build the evaluator called ``name`` (one of ``EVALUATORS``)."""
    return EVALUATORS[name](model, masks, loss_fn)
