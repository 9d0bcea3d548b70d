"""Candidate evaluators: the loss of the network for several channel sets of one layer.

``naive`` runs the whole network once per candidate, as the official code does; it is the
reference. ``batched`` (the default) gives the same losses up to float rounding, faster (see
:mod:`gfsprune.scoring.batched`). Under ``torch.distributed`` either is wrapped in a
:class:`ShardedEvaluator`.
"""

from __future__ import annotations

from collections.abc import Mapping

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
    "ShardedEvaluator",
    "make_evaluator",
]

#: The evaluators ``PruneConfig(evaluator=NAME)`` accepts.
EVALUATORS: Mapping[str, type[Evaluator]] = {"naive": NaiveEvaluator, "batched": BatchedEvaluator}


def make_evaluator(
    cls: type[Evaluator],
    model: nn.Module,
    masks: Masks,
    loss_fn: LossFn,
    *,
    graph: tp.DependencyGraph | None = None,
) -> Evaluator | ShardedEvaluator:
    """``cls(model, masks, loss_fn, graph=graph)``, sharded across processes when
    ``torch.distributed`` is initialised with more than one."""
    evaluator = cls(model, masks, loss_fn, graph=graph)
    return ShardedEvaluator(evaluator) if distributed.world_size() > 1 else evaluator
