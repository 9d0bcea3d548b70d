"""Candidates split across the processes of ``torch.distributed``."""

from __future__ import annotations

import math

from gfsprune import distributed
from gfsprune.scoring.base import Evaluator

__all__ = ["ShardedEvaluator"]


class ShardedEvaluator:
    """Splits the candidates across the processes of ``torch.distributed`` and gathers the
    losses, so that every process sees all of them and makes the same pick.

    Process ``r`` of ``W`` scores rows ``r, r + W, ...`` of ``keep``; all processes must be
    given the same mini-batch.
    """

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner

    def __call__(self, inputs, targets, layer, keep) -> list[float]:
        world, rank = distributed.world_size(), distributed.rank()
        per_rank = -(-keep.shape[0] // world)  # ceil: all_gather needs equal lengths
        mine = keep[rank::world]
        local = self.inner(inputs, targets, layer, mine) if len(mine) else []
        local += [math.nan] * (per_rank - len(local))
        gathered = distributed.all_gather(local).cpu()  # (W, per_rank)
        return [float(gathered[i % world, i // world]) for i in range(keep.shape[0])]

    def precise(self, inputs, targets, layer, keep) -> list[float]:
        """The inner evaluator's float64 losses (every process computes all of them: they are
        asked for only at the rare near-ties)."""
        return self.inner.precise(inputs, targets, layer, keep)

    def reset(self) -> None:
        """The inner evaluator's reset."""
        self.inner.reset()

    def gradient(self, inputs, targets, layer, keep):
        """The inner evaluator's gradient (every process computes the same one)."""
        return self.inner.gradient(inputs, targets, layer, keep)
