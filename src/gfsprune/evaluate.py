"""Candidate evaluators: the loss of the network for several channel sets of one layer.

``naive`` runs the whole network once per candidate, as the official code does; it is the
reference. ``batched`` scores on a copy of the network with its BatchNorms folded into the
convolutions (channels-last on a CPU), stacks the candidates along the batch dimension
(chunked under a memory cap), reuses the activations computed before the layer's first
consumer, and runs that consumer once on the channels every candidate shares plus, per
candidate, only on the channels where it differs; so only the rest of the network runs once
per candidate. Both give the same losses up to float rounding, and so the same picks.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from gfsprune import distributed
from gfsprune._nest import map_tensors, tensors
from gfsprune.surgery import ChannelLayer, Masks, build_graph, fold_batchnorms, run_model

__all__ = ["Evaluator", "make_evaluator", "EVALUATORS"]

# Samples per batched forward pass on a CPU: on resnet20 (2 cores, batch 64), passes of 64 or
# 128 samples scored candidates equally fast, 256 up to 1.2x and 512 up to 1.8x slower.
_CPU_SAMPLES = 128

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Evaluator(ABC):
    """Scores channel sets of one layer on one mini-batch.

    Attributes:
        model: The network in eval mode, with ``masks`` installed.
        masks: The channel masks of every layer.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch.
        max_batch: Cap on samples per forward pass (candidates x batch) for ``batched``;
            ``None`` derives it from ``memory`` (see ``chunk_size``).
        memory: Rough activation-memory budget in bytes for one batched forward pass.
    """

    model: nn.Module
    masks: Masks
    loss_fn: LossFn
    max_batch: int | None = None
    memory: int = 1 << 30

    def chunk_size(self, inputs: object, batch: int) -> int:
        """Candidates per forward pass. Without ``max_batch``: on a CPU, passes of about
        ``_CPU_SAMPLES`` samples (larger ones fall out of cache and run slower per sample,
        measured on resnet20); on a GPU, as many as fit ``memory``, a sample being assumed
        to need about 64 times its input in activations at once (wide early feature maps)."""
        if self.max_batch is not None:
            return max(1, self.max_batch // batch)
        found = tensors(inputs)
        if all(t.device.type == "cpu" for t in found):
            return max(1, _CPU_SAMPLES // batch)
        numel = sum(t[0].numel() for t in found)
        return max(1, self.memory // (64 * 4 * max(numel, 1) * batch))

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
    """Raised to stop a capture when it reaches the layer's first consumer."""


@dataclass(eq=False)
class _Call:
    module: nn.Module
    done: bool = False  # finished before the layer's first consumer was called
    nested: Counter = field(default_factory=Counter)  # calls made inside this one, per module


class _Uses(TorchFunctionMode):
    """Records which tensors of ``watched`` every torch function reads, with the module
    calls under way at the time."""

    def __init__(self, watched: dict[int, list[_Call]], stack: list[_Call]) -> None:
        super().__init__()
        self.watched, self.stack = watched, stack
        self.reads: list[tuple[set[int], tuple[_Call, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hits = {id(t) for t in tensors((args, kwargs))} & self.watched.keys()
        if hits:
            self.reads.append((hits, tuple(self.stack)))
        return func(*args, **kwargs)


class _Prefix:
    """The module calls of a forward pass that finish before a layer's first consumer.

    Their outputs do not depend on the layer's mask, so a batched pass over ``K`` copies of
    the same inputs can return them tiled instead of computing them ``K`` times. The call tree
    is the same for every batch (the model is traceable, so its control flow is static): it is
    recorded once per layer, by a reference pass that also finds the cached outputs nothing
    outside the cached calls reads (in a chain of blocks, all but the last): those are not
    tiled. Each step then only captures the outermost finished calls and the first
    consumer's input.
    """

    def __init__(self, model: nn.Module, inputs: object, consumers: dict[nn.Module, str]) -> None:
        self.consumers = consumers
        calls: list[_Call] = []
        stack: list[_Call] = []
        # id of each tensor a replay could tile -> the finished calls that output it (None:
        # the network's inputs); the tensors are kept alive so that ids are not reused
        produced: dict[int, list[_Call | None]] = {id(t): [None] for t in tensors(inputs)}
        alive: list[object] = []
        first_call: list[_Call] = []

        def before(module: nn.Module, _args: tuple) -> None:
            call = _Call(module)
            if module in consumers and not first_call:
                self.first, self.first_name = module, consumers[module]
                first_call.append(call)
            for outer in stack:
                outer.nested[module] += 1
            calls.append(call)
            stack.append(call)

        def after(module: nn.Module, _args: tuple, output: object) -> None:
            call = stack.pop()
            if not first_call:
                call.done = True
                alive.append(output)
                for t in tensors(output):
                    produced.setdefault(id(t), []).append(call)

        uses = _Uses(produced, stack)
        with uses:
            result = self._run(model, inputs, model.modules(), before, after)
        # ordinal of each call among its module's calls; the outermost finished ones are cached
        ordinal: Counter = Counter()
        inside: Counter = Counter()  # how many finished calls still enclose the current one
        self.cached: dict[nn.Module, dict[int, Counter]] = {}
        index_of: dict[_Call, tuple[nn.Module, int]] = {}
        for call in calls:
            index = ordinal[call.module]
            ordinal[call.module] += 1
            if call.done and not inside:
                self.cached.setdefault(call.module, {})[index] = call.nested
                index_of[call] = call.module, index
                inside.update(call.nested)
            elif inside[call.module]:
                inside[call.module] -= 1
                inside += Counter()  # drop zero counts
        for nested in (n for by_index in self.cached.values() for n in by_index.values()):
            for module in list(nested):
                if module not in self.cached:
                    del nested[module]  # only cached modules' call counts matter
        # A tiled tensor is read where no finished call (which a replay skips) encloses the
        # read, or it is (part of) the network's output; with the first consumer's call
        # replaced, what that call reads is not read either.
        self.unread: dict[bool, set[tuple[nn.Module, int] | None]] = {}
        for replaced in (False, True):
            read = {id(t) for t in tensors(result)}
            for hits, under in uses.reads:
                skipped = any(c.done for c in under) or (replaced and first_call[0] in under)
                if not skipped:
                    read |= hits
            live = {source for i in read for source in produced.get(i, ())}
            tiled = [*index_of, None]
            self.unread[replaced] = {index_of.get(c) for c in tiled if c not in live}

    @staticmethod
    def _run(model, inputs, modules, before, after) -> object:
        handles = []
        for m in modules:
            # before the mask hooks: the first consumer's input is recorded unmasked
            handles.append(m.register_forward_pre_hook(before, prepend=True))
            if after is not None:
                handles.append(m.register_forward_hook(after))
        try:
            return run_model(model, inputs)
        except _PrefixDone:
            return None
        finally:
            for h in handles:
                h.remove()

    def capture(
        self, model: nn.Module, inputs: object
    ) -> tuple[dict[tuple[nn.Module, int], object], torch.Tensor]:
        """Run the prefix on ``inputs``: the outputs of the cached calls, and the (unmasked)
        input of the first consumer."""
        outputs: dict[tuple[nn.Module, int], object] = {}
        seen: Counter = Counter()
        open_calls: dict[nn.Module, list[int]] = {}
        first: list[torch.Tensor] = []

        def before(module: nn.Module, args: tuple) -> None:
            if module in self.consumers:
                first.append(args[0])
                raise _PrefixDone
            open_calls.setdefault(module, []).append(seen[module])
            seen[module] += 1

        def after(module: nn.Module, _args: tuple, output: object) -> None:
            index = open_calls[module].pop()
            if index in self.cached.get(module, ()):
                outputs[module, index] = output

        self._run(model, inputs, [*self.cached, *self.consumers], before, after)
        return outputs, first[0]

    @contextmanager
    def replay(
        self,
        outputs: dict[tuple[nn.Module, int], object],
        inputs: object,
        k: int,
        first: Callable[[], torch.Tensor] | None = None,
    ) -> Iterator[object]:
        """While active, cached calls return their captured output tiled ``k`` times, and
        the first consumer's call returns ``first()`` when given. Yields ``inputs`` tiled
        ``k`` times. Tensors nothing reads are left uninitialised instead of tiled."""
        seen: Counter = Counter()
        unread = self.unread[first is not None]

        def tile(obj: object, key: tuple[nn.Module, int] | None) -> object:
            if key in unread:
                return map_tensors(obj, lambda t: t.new_empty((k * t.shape[0], *t.shape[1:])))
            return _repeat(obj, k)

        def patch(module: nn.Module) -> None:
            original = module.forward

            def forward(*args, **kwargs):
                index = seen[module]
                seen[module] += 1
                nested = self.cached.get(module, {}).get(index)
                if nested is not None:
                    seen.update(nested)  # calls made inside this one are skipped with it
                    return tile(outputs[module, index], (module, index))
                if module is self.first and index == 0 and first is not None:
                    return first()
                return original(*args, **kwargs)

            module.forward = forward

        patched = [*self.cached, self.first]
        try:
            for m in patched:
                patch(m)
            yield tile(inputs, None)
        finally:
            for m in patched:
                del m.forward  # back to the class's forward


class _SharedPlusDelta:
    """``module(x * factors[k])`` for every row ``k`` of ``factors``, with ``module`` run
    once on the factors all rows share and, per row, only on the few inputs where the row
    differs from them (one batched matrix product over the rows' input patches): linearity
    makes the sum exact up to rounding.

    ``rows(start, stop)`` stacks those rows' outputs along the batch dimension. Made by
    :meth:`build`.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        common: torch.Tensor,
        diff: torch.Tensor,
        count: int,
    ) -> None:
        self.module, self.x = module, x
        # Each row's differing inputs first (ties keep index order), padded with zero factors
        # to ``count`` (at least one) per row.
        order = (diff != 0).to(torch.int8).argsort(dim=1, descending=True, stable=True)
        self.index = order[:, :count]
        self.coef = diff.gather(1, self.index)
        conv = not isinstance(module, nn.Linear)
        shape = (-1,) + (1,) * (x.dim() - 2) if conv else (-1,)
        shared = type(module).forward(module, x * common.view(shape))
        last = shared.movedim(1, -1) if conv else shared  # features last
        self.out_shape = last.shape
        self.shared = last.reshape(-1, last.shape[-1])  # (positions, out)

    @classmethod
    def build(
        cls, module: nn.Module, x: torch.Tensor, factors: torch.Tensor
    ) -> _SharedPlusDelta | None:
        """The product for ``module`` (the first consumer), ``x`` (its unmasked input) and
        ``factors`` (``(K, inputs)``), or ``None`` where it would not save work: unless
        ``module`` is a linear layer or an ungrouped 2-d convolution that does enough work
        per output (64 multiply-adds per differing input; measured on a 2-core CPU) and
        several rows differ in few of its inputs.

        The shared factors are the rows' minimum (as in forward selection) or maximum (as
        in backward elimination), whichever leaves fewer differences.
        """
        if isinstance(module, nn.Linear):
            work = module.in_features
        elif type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
            work = module.in_channels * math.prod(module.kernel_size)
        else:
            return None
        if factors.shape[0] < 2:
            return None
        splits = [(factors - common, common) for common in (factors.amin(0), factors.amax(0))]
        counts = [int((diff != 0).sum(1).max()) for diff, _ in splits]
        count = min(counts)
        diff, common = splits[counts.index(count)]
        count = max(count, 1)
        if count * 4 > factors.shape[1] or work < 64 * count:
            return None
        return cls(module, x, common, diff, count)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        index, coef, module, x = self.index[start:stop], self.coef[start:stop], self.module, self.x
        k, n = index.shape
        if isinstance(module, nn.Linear):
            flat = x.reshape(-1, x.shape[-1])
            patches = flat[:, index].permute(1, 0, 2)  # (k, positions, n)
            weight = (module.weight[:, index] * coef).permute(1, 2, 0)  # (k, n, out)
        else:
            taps = math.prod(module.kernel_size)
            patches = nn.functional.unfold(
                x[:, index.flatten()],
                module.kernel_size,
                dilation=module.dilation,
                padding=module.padding,
                stride=module.stride,
            )  # (B, k * n * taps, L)
            patches = patches.unflatten(1, (k, n * taps)).permute(1, 0, 3, 2).flatten(1, 2)
            weight = module.weight[:, index] * coef.view(k, n, 1, 1)  # (out, k, n, kh, kw)
            weight = weight.permute(1, 2, 3, 4, 0).flatten(1, 3)  # (k, n * taps, out)
        out = torch.baddbmm(self.shared.expand(k, -1, -1), patches, weight)
        out = out.view(k * self.out_shape[0], *self.out_shape[1:])  # features last
        if isinstance(module, nn.Linear):
            return out
        out = out.movedim(-1, 1)  # channels-last strides
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


@dataclass
class BatchedEvaluator(Evaluator):
    """Candidates stacked along the batch dimension, in chunks of at most ``max_batch``,
    reusing the activations computed before the layer's first consumer and running that
    consumer on the candidates' shared channels once.

    It scores on a copy of ``model`` with the BatchNorms folded (``graph``, ``model``'s
    dependency graph, finds them; built on the first call when not given) and, on a CPU,
    channels-last.
    """

    graph: tp.DependencyGraph | None = None
    _net: nn.Module | None = field(default=None, init=False, repr=False)
    _channels_last: bool = field(default=False, init=False, repr=False)
    _prefixes: dict[str, _Prefix] = field(default_factory=dict, init=False, repr=False)

    def _scoring_net(self, inputs: object) -> nn.Module:
        if self._net is None:
            example = map_tensors(inputs, lambda t: t[:1])
            with self.masks.suspended():  # a copy of the hooks would mask twice
                net = fold_batchnorms(self.model, self.graph or build_graph(self.model, example))
            # Measured on resnet20, 2 CPU cores: convolutions run faster channels-last.
            self._channels_last = all(t.device.type == "cpu" for t in tensors(inputs))
            if self._channels_last:
                net = net.to(memory_format=torch.channels_last)
            self._net = self.masks.attach(net)
        return self._net

    def __call__(self, inputs, targets, layer, keep):
        net = self._scoring_net(inputs)  # tracing needs autograd: not in inference mode
        with torch.inference_mode():
            return self._score(net, inputs, targets, layer, keep)

    def _score(self, net, inputs, targets, layer, keep) -> list[float]:
        if self._channels_last:
            inputs = map_tensors(inputs, _channels_last)
        batch = targets.shape[0]
        chunk = self.chunk_size(inputs, batch)
        prefix = self._prefixes.get(layer.name)
        if prefix is None:
            consumers = {net.get_submodule(c.name): c.name for c in layer.consumers}
            prefix = self._prefixes[layer.name] = _Prefix(net, inputs, consumers)
        outputs, first_input = prefix.capture(net, inputs)
        factors = self.masks.factors(layer, keep)[prefix.first_name]
        shared = _SharedPlusDelta.build(prefix.first, first_input, factors)
        losses: list[float] = []
        for start in range(0, keep.shape[0], chunk):
            rows = keep[start : start + chunk]
            k = rows.shape[0]
            if shared is None:
                first, bypass = None, ()
            else:  # the first consumer's masks are applied by ``shared``
                first, bypass = (
                    functools.partial(shared.rows, start, start + k),
                    (prefix.first_name,),
                )
            with (
                self.masks.candidates(layer, rows, bypass=bypass),
                prefix.replay(outputs, inputs, k, first) as tiled,
            ):
                out = run_model(net, tiled)
            for i in range(k):
                part = out[i * batch : (i + 1) * batch]
                losses.append(float(self.loss_fn(part, targets)))
        return losses


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _repeat(inputs: object, k: int) -> object:
    """Tile every tensor of ``inputs`` ``k`` times along the batch dimension, keeping its
    memory format."""
    return map_tensors(inputs, lambda t: torch.cat([t] * k))


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
