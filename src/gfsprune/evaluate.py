"""Candidate evaluators: the loss of the network for several channel sets of one layer.

``naive`` runs the whole network once per candidate, as the official code does; it is the
reference. ``batched`` stacks the candidates along the batch dimension (chunked under a
memory cap) and reuses the activations computed before the layer's first consumer, so only
the rest of the network runs once per candidate. Both give the same losses up to float
rounding, and so the same picks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from gfsprune import distributed
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


class _PrefixDone(Exception):
    """Raised to stop the reference pass when it reaches the layer's first consumer."""


@dataclass
class _Call:
    module: nn.Module
    output: object = None
    done: bool = False
    nested: Counter = field(default_factory=Counter)  # calls made inside this one, per module


class _PrefixCache:
    """The module calls of one forward pass that finish before a layer's first consumer.

    Their outputs do not depend on the layer's mask, so a batched pass over ``K`` copies of
    the same inputs can return them tiled instead of computing them ``K`` times.
    """

    def __init__(self, model: nn.Module, inputs: object, consumers: set[nn.Module]) -> None:
        self.model = model
        self.calls: dict[nn.Module, list[_Call]] = {}
        stack: list[_Call] = []

        def before(module: nn.Module, _args: tuple) -> None:
            if module in consumers:
                raise _PrefixDone
            for outer in stack:
                outer.nested[module] += 1
            call = _Call(module)
            self.calls.setdefault(module, []).append(call)
            stack.append(call)

        def after(module: nn.Module, _args: tuple, output: object) -> None:
            call = stack.pop()
            call.output, call.done = output, True

        handles = []
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(after))
        try:
            run_model(model, inputs)
        except _PrefixDone:
            pass
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def replay(self, k: int) -> Iterator[None]:
        """While active, finished calls return their cached output tiled ``k`` times."""
        seen: Counter = Counter()
        patched = [m for m, calls in self.calls.items() if any(c.done for c in calls)]

        def patch(module: nn.Module) -> None:
            original = module.forward

            def forward(*args, **kwargs):
                calls = self.calls[module]
                index = seen[module]
                seen[module] += 1
                if index < len(calls) and calls[index].done:
                    seen.update(calls[index].nested)  # those calls are skipped with it
                    return _repeat(calls[index].output, k)
                return original(*args, **kwargs)

            module.forward = forward

        try:
            for m in patched:
                patch(m)
            yield
        finally:
            for m in patched:
                del m.forward  # back to the class's forward


class BatchedEvaluator(Evaluator):
    """Candidates stacked along the batch dimension, in chunks of at most ``max_batch``,
    reusing the activations computed before the layer's first consumer."""

    @torch.inference_mode()
    def __call__(self, inputs, targets, layer, keep):
        batch = targets.shape[0]
        chunk = max(1, self.max_batch // batch)
        modules = dict(self.model.named_modules())
        prefix = _PrefixCache(self.model, inputs, {modules[c.name] for c in layer.consumers})
        losses: list[float] = []
        for start in range(0, keep.shape[0], chunk):
            rows = keep[start : start + chunk]
            k = rows.shape[0]
            with self.masks.candidates(layer, rows), prefix.replay(k):
                out = run_model(self.model, _repeat(inputs, k))
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


EVALUATORS: dict[str, type[Evaluator]] = {"naive": NaiveEvaluator, "batched": BatchedEvaluator}


def make_evaluator(
    name: str, model: nn.Module, masks: Masks, loss_fn: LossFn
) -> Evaluator | ShardedEvaluator:
    """Build the evaluator called ``name`` (one of ``EVALUATORS``), sharded across processes
    when ``torch.distributed`` is initialised with more than one."""
    evaluator = EVALUATORS[name](model, masks, loss_fn)
    return ShardedEvaluator(evaluator) if distributed.world_size() > 1 else evaluator
