"""The prefix cache: module calls that finish before a layer's first consumer run once per
step, and a batched pass over the candidates replays their outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gfsprune._inputs import map_tensors, run_model, tensors

__all__ = ["Prefix"]


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


class Prefix:
    """The module calls of a forward pass that finish before a layer's first consumer.

    Their outputs do not depend on the layer's mask, so a batched pass over ``K`` copies of
    the same inputs can return them tiled instead of computing them ``K`` times. The call tree
    is the same for every batch (the model is traceable, so its control flow is static): it is
    recorded once per layer, by a reference pass that also finds the cached outputs nothing
    outside the cached calls reads (in a chain of blocks, all but the last): those are not
    tiled. Each step then only captures the outermost finished calls and the first
    consumer's input. :attr:`position` is the first consumer's place among the pass's module
    calls: a prefix of another layer with a lower position ends before this one begins.
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
                self.position = len(calls)
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
        if not first_call:
            raise ValueError("none of the consumers was called in a forward pass")
        #: The modules called before the first consumer (nested calls too).
        self.called = {call.module for call in calls if call.done}
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

        # a module may set its own forward in __init__ (timm's FasterNet: a bound method)
        own = {m: vars(m)["forward"] for m in [*self.cached, self.first] if "forward" in vars(m)}
        patched: list[nn.Module] = []  # only these are restored: an interrupt (Ctrl-C) may
        try:  # come before all are patched, and must not turn into an AttributeError
            for m in dict.fromkeys([*self.cached, self.first]):
                patch(m)
                patched.append(m)
            yield tile(inputs, None)
        finally:
            for m in patched:
                if m in own:
                    m.forward = own[m]
                else:
                    del m.forward  # back to the class's forward


def _repeat(inputs: object, k: int) -> object:
    """Tile every tensor of ``inputs`` ``k`` times along the batch dimension, keeping its
    memory format."""
    return map_tensors(inputs, lambda t: torch.cat([t] * k))
