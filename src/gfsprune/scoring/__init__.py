"""Objectives (what one layer's selection minimises) and the evaluators of the network loss.

:mod:`gfsprune.scoring.objective` is the objective protocol. :class:`Reconstruction` scores
item sets by each layer's reconstruction of its consumers' outputs, in closed form
(:mod:`gfsprune.scoring.reconstruction`). :class:`NetworkLoss` (the default) scores them by
the loss of the whole network through an evaluator: ``naive`` runs the whole network once
per candidate, as the official code does (the reference); ``batched`` (the default) gives
the same losses up to float rounding, faster (see :mod:`gfsprune.scoring.batched`). Under
``torch.distributed`` either is wrapped in a :class:`ShardedEvaluator`.
"""

from __future__ import annotations

from gfsprune.scoring.base import Evaluator, LossFn
from gfsprune.scoring.batched import BatchedEvaluator
from gfsprune.scoring.loss import EVALUATORS, NetworkLoss
from gfsprune.scoring.naive import NaiveEvaluator
from gfsprune.scoring.objective import BoundObjective, LayerObjective, Objective, SelectionRun
from gfsprune.scoring.reconstruction.objective import Reconstruction
from gfsprune.scoring.sharded import ShardedEvaluator, make_evaluator

__all__ = [
    "EVALUATORS",
    "OBJECTIVES",
    "BatchedEvaluator",
    "BoundObjective",
    "Evaluator",
    "LayerObjective",
    "LossFn",
    "NaiveEvaluator",
    "NetworkLoss",
    "Objective",
    "Reconstruction",
    "SelectionRun",
    "ShardedEvaluator",
    "make_evaluator",
]

#: The objectives ``PruneConfig(objective=NAME)`` accepts.
OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (NetworkLoss, Reconstruction)}
