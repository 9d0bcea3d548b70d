"""The forward passes that gather a layer's statistics, resumed where the previous layer's
began.

A layer's statistics need its consumers' inputs and outputs: a pass of the network (pruned so
far, or unpruned) from the input up to its last consumer. The module calls that finished
before the previous layer's first consumer give the same outputs in the next layer's pass
while nothing they read has changed (their parameters, their buffers, the masks their hooks
apply). :class:`Passes` keeps those outputs per calibration batch, within a memory budget,
and the next pass replays them (:class:`~gfsprune.scoring.prefix.Prefix`): in a chain of
layers each pass then runs from the previous layer's first consumer to the current layer's
last, not from the input. On a CPU, images may go in channels-last memory order, where the
model gives the same outputs so: a forward pass ran 1.2-1.8x faster so (torchvision's
resnet18, resnet50, mobilenet_v2, mobilenet_v3_large and efficientnet_b0, one thread;
``benchmarks/stats_kernels.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gfsprune._inputs import map_tensors, run_model, tensors
from gfsprune.scoring.prefix import Prefix

__all__ = ["Calls", "Passes", "call_counts", "channels_last", "takes_channels_last"]

_log = logging.getLogger(__name__)

#: Each consumer's (input, output) per call, in order.
Calls = dict[str, list[tuple[torch.Tensor, torch.Tensor]]]


class _Stop(Exception):
    """Raised by a hook once every consumer has been seen: the rest of the pass is skipped."""


def _record(model: nn.Module, names: Sequence[str], inputs: object, stop_after) -> Calls:
    """Run ``model`` on ``inputs`` and return each named module's (input, output) per call;
    with ``stop_after`` (name to calls per pass) the pass stops once every module has been
    called that often."""
    seen: Calls = {n: [] for n in names}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen[name].append((args[0], output))
            if stop_after and all(len(seen[n]) >= stop_after[n] for n in names):
                raise _Stop

        return hook

    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            run_model(model, inputs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def _two_samples(inputs: object) -> object:
    """The first two samples of a batch: enough to see which modules a pass calls."""
    return map_tensors(inputs, lambda t: t[:2] if t.dim() else t)


def call_counts(model: nn.Module, names: Sequence[str], inputs: object) -> dict[str, int] | None:
    """How often each of ``names`` is called in a pass of ``model`` (on the first two samples
    of ``inputs``): later passes stop there. ``None`` where that pass fails."""
    try:
        seen = _record(model, names, _two_samples(inputs), None)
    except Exception as err:  # the model's own error on two samples: passes run to the end
        _log.info("the statistics' passes run to the end (%s)", err)
        return None
    return {n: len(calls) for n, calls in seen.items()}


def channels_last(inputs: object) -> object:
    """``inputs`` with every 4-D floating-point tensor in channels-last memory order."""
    return map_tensors(
        inputs,
        lambda t: (
            t.contiguous(memory_format=torch.channels_last)
            if t.dim() == 4 and t.is_floating_point()
            else t
        ),
    )


def takes_channels_last(model: nn.Module, inputs: object) -> bool:
    """Whether ``model`` on a CPU gives the same outputs on channels-last images as on
    ``inputs`` (its pass on two samples; a model that cannot take them, e.g. one that views
    a map as a matrix, does not)."""
    images = [t for t in tensors(inputs) if t.dim() == 4 and t.is_floating_point()]
    if not images or any(t.device.type != "cpu" for t in images):
        return False
    sample = _two_samples(inputs)
    try:
        with torch.no_grad():  # on copies: a model may change its inputs in place
            plain = tensors(run_model(model, map_tensors(sample, torch.clone)))
            last = tensors(run_model(model, channels_last(map_tensors(sample, torch.clone))))
    except Exception:  # the model's own error: it keeps its inputs' layout
        return False
    return len(plain) == len(last) and all(
        _close(a, b) for a, b in zip(plain, last, strict=True) if a.is_floating_point()
    )


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A tensor of ``t``'s shape that holds one element (a replay allocates it afresh)."""
    return t.new_zeros(()).expand(t.shape)


def _nbytes(obj: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(obj))


def _signature(modules: Sequence[nn.Module], state) -> list[tuple[torch.Tensor, int | None]]:
    """What the modules' calls read besides their inputs, each tensor with its version (an
    in-place change raises it; ``None`` for a tensor made in inference mode, which has
    none)."""
    read = []
    for m in modules:
        read += [*m.parameters(recurse=False), *m.buffers(recurse=False), *state(m)]
    return [(t, None if t.is_inference() else t._version) for t in read]


@dataclass
class _Kept:
    """One batch's outputs of a prefix's cached calls (those nothing reads outside the
    cached calls stand in as zero-strided tensors of their shape), and what they read."""

    prefix: Prefix
    outputs: dict
    modules: list[nn.Module]
    signature: list[tuple[torch.Tensor, int | None]]
    nbytes: int

    def resumes(self, prefix: Prefix, state) -> bool:
        """Whether a pass up to ``prefix``'s consumers may replay these outputs: the kept
        prefix ends before ``prefix``'s first consumer, and nothing it read has changed."""
        if self.prefix.position > prefix.position:
            return False
        now = _signature(self.modules, state)
        return len(now) == len(self.signature) and all(
            t is u and v is not None and v == w
            for (t, v), (u, w) in zip(now, self.signature, strict=True)
        )


class Passes:
    """Forward passes of ``model`` that record its consumers' calls, keeping up to
    ``budget`` bytes of outputs between them (``0``: every pass runs from the input).

    ``state(module)`` gives the tensors a module's hooks read besides its parameters and
    buffers (the masks' factors): a change to them, in place or by replacement, makes what
    was kept across that module stale. The first resumed pass is checked against a pass from
    the input (on the first batch, once); where they differ (a model whose calls are not
    the same in every pass), nothing is kept from then on.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        budget: int = 0,
        state: Callable[[nn.Module], Sequence[torch.Tensor]] = lambda _m: (),
    ) -> None:
        self.model, self.budget, self._state = model, budget, state
        self._kept: dict[int, _Kept] = {}
        self._checked = False

    def prefix(self, names: Sequence[str], inputs: object) -> Prefix | None:
        """The prefix before the first call of any of ``names``, from a pass on the first two
        samples of ``inputs`` (``None`` where nothing is kept, or that pass fails)."""
        if not self.budget:
            return None
        consumers = {self.model.get_submodule(n): n for n in names}
        try:
            with torch.no_grad():
                return Prefix(self.model, _two_samples(inputs), consumers)
        except Exception as err:  # the model's own error on two samples: pass from the input
            _log.info("the statistics' passes run from the input (%s)", err)
            return None

    def calls(
        self,
        prefix: Prefix | None,
        index: int,
        inputs: object,
        names: Sequence[str],
        stop_after: dict[str, int] | None,
    ) -> Calls:
        """The consumers' calls on batch ``index`` (``inputs``), resumed from what was kept
        for that batch where it still holds; keeps ``prefix``'s outputs for the next pass."""
        kept = self._kept.pop(index, None)
        resume = kept is not None and prefix is not None and kept.resumes(prefix, self._state)
        captured: dict = {}
        handles = [] if prefix is None else self._capture(prefix, captured)
        try:
            replay = kept.prefix.replay(kept.outputs, inputs, 1) if resume else None
            with replay or contextlib.nullcontext(inputs) as x:
                seen = _record(self.model, names, x, stop_after)
        finally:
            for h in handles:
                h.remove()
        if resume and not self._checked:
            self._checked = True
            plain = _record(self.model, names, inputs, stop_after)
            if not _agree(seen, plain):
                _log.info("resumed passes differ from passes from the input: not resumed")
                self.budget = 0
                self._kept.clear()
                return plain
        if prefix is not None and self.budget:
            self._keep(prefix, index, captured)
        return seen

    def _capture(self, prefix: Prefix, captured: dict) -> list:
        """Hooks that store the outputs of ``prefix``'s cached calls in ``captured``: copies
        (a later call may change them in place), and a zero-strided stand-in of the same
        shape where nothing reads them outside the cached calls."""
        ordinal: Counter = Counter()
        open_calls: dict[nn.Module, list[int]] = {}
        unread = prefix.unread[False]

        def before(module: nn.Module, _args: tuple) -> None:
            open_calls.setdefault(module, []).append(ordinal[module])
            ordinal[module] += 1

        def after(module: nn.Module, _args: tuple, output: object) -> None:
            index = open_calls[module].pop()
            if index in prefix.cached[module]:
                key = module, index
                stand_in = key in unread
                captured[key] = map_tensors(output, _stand_in if stand_in else torch.clone)

        handles = []
        for m in prefix.cached:
            handles.append(m.register_forward_pre_hook(before, prepend=True))
            handles.append(m.register_forward_hook(after))
        return handles

    def _keep(self, prefix: Prefix, index: int, captured: dict) -> None:
        expected = {(m, i) for m, by_index in prefix.cached.items() for i in by_index}
        if captured.keys() != expected:  # a call skipped inside a replay: counts differ
            return
        unread = prefix.unread[False]
        nbytes = _nbytes([out for key, out in captured.items() if key not in unread])
        if nbytes + sum(k.nbytes for k in self._kept.values()) > self.budget:
            return
        modules = list(prefix.called)
        self._kept[index] = _Kept(
            prefix, captured, modules, _signature(modules, self._state), nbytes
        )


def _agree(mine: Calls, plain: Calls) -> bool:
    """Whether two passes' calls match (within float rounding of the device's kernels)."""
    for name, calls in plain.items():
        if len(calls) != len(mine[name]):
            return False
        for pair, other in zip(calls, mine[name], strict=True):
            if not all(_close(a, b) for a, b in zip(pair, other, strict=True)):
                return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` within float rounding of the device's kernels."""
    scale = float(a.abs().max()) if a.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
