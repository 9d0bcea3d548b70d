"""Candidates split across the processes of ``torch.distributed``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn

from gfsprune import distributed
from gfsprune.scoring.base import Evaluator, LossFn
from gfsprune.surgery import Masks

__all__ = ["ShardedEvaluator", "make_evaluator"]


@dataclass
class ShardedEvaluator(Evaluator):
    """Splits the candidates across the processes of ``torch.distributed`` and gathers the
    losses of the ``inner`` evaluator, so that every process sees all of them and makes the
    same pick.

    Process ``r`` of ``W`` scores rows ``r, r + W, ...`` of ``keep``; all processes must be
    given the same mini-batch. The float64 losses and the gradient are the inner evaluator's
    (every process computes the same ones: they are asked for only at near-ties and screens).
    """

    inner: Evaluator = field(kw_only=True)

    @classmethod
    def around(cls, inner: Evaluator) -> ShardedEvaluator:
        """``inner``, sharded."""
        return cls(inner.model, inner.masks, inner.loss_fn, graph=inner.graph, inner=inner)

    def __call__(self, inputs, targets, layer, keep) -> list[float]:
        world, rank = distributed.world_size(), distributed.rank()
        per_rank = -(-keep.shape[0] // world)  # ceil: all_gather needs equal lengths
        mine = keep[rank::world]
        local = self.inner(inputs, targets, layer, mine) if len(mine) else []
        local += [math.nan] * (per_rank - len(local))
        gathered = distributed.all_gather(local).cpu()  # (W, per_rank)
        return [float(gathered[i % world, i // world]) for i in range(keep.shape[0])]

    def precise(self, inputs, targets, layer, keep) -> list[float]:
        return self.inner.precise(inputs, targets, layer, keep)

    def reset(self) -> None:
        self.inner.reset()

    def gradient(self, inputs, targets, layer, keep):
        return self.inner.gradient(inputs, targets, layer, keep)


def make_evaluator(
    cls: type[Evaluator],
    model: nn.Module,
    masks: Masks,
    loss_fn: LossFn,
    *,
    graph: tp.DependencyGraph | None = None,
) -> Evaluator:
    """``cls(model, masks, loss_fn, graph=graph)``, sharded across processes when
    ``torch.distributed`` is initialised with more than one."""
    evaluator = cls(model, masks, loss_fn, graph=graph)
    return ShardedEvaluator.around(evaluator) if distributed.world_size() > 1 else evaluator
