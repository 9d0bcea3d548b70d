"""Candidate evaluators: the loss of the network for several channel sets of one layer."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from gfsprune import distributed
from gfsprune.scoring.base import Evaluator, LossFn
from gfsprune.scoring.batched import BatchedEvaluator
from gfsprune.scoring.naive import NaiveEvaluator
from gfsprune.scoring.sharded import ShardedEvaluator
from gfsprune.surgery import Masks

__all__ = [
    "EVALUATORS",
    "BatchedEvaluator",
    "Evaluator",
    "LossFn",
    "NaiveEvaluator",
    "make_evaluator",
]

EVALUATORS: dict[str, type[Evaluator]] = {"naive": NaiveEvaluator, "batched": BatchedEvaluator}


def make_evaluator(
    name: str,
    model: nn.Module,
    masks: Masks,
    loss_fn: LossFn,
    *,
    graph: tp.DependencyGraph | None = None,
) -> Evaluator | ShardedEvaluator:
    """Build the evaluator called ``name`` (one of ``EVALUATORS``), sharded across processes
    when ``torch.distributed`` is initialised with more than one. ``graph`` (``model``'s
    dependency graph) spares ``batched`` tracing the model again."""
    options = {"graph": graph} if name == "batched" else {}
    evaluator = EVALUATORS[name](model, masks, loss_fn, **options)
    return ShardedEvaluator(evaluator) if distributed.world_size() > 1 else evaluator
