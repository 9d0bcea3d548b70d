"""The fast evaluator: candidates stacked along the batch, a cached prefix, a shared first
consumer.

It scores on a copy of the network with its BatchNorms folded into the convolutions
(channels-last on a CPU), stacks the candidates along the batch dimension (chunked under a
memory cap), reuses the activations computed before the layer's first consumer, and runs that
consumer once on the channels every candidate shares plus, per candidate, only on the channels
where it differs; so only the rest of the network runs once per candidate. It gives the naive
evaluator's losses up to float rounding.

None of this may change what a user's model computes or whether it runs (issue 28: a model
ending in ``x.view(x.size(0), -1)`` fails on channels-last activations; one that concatenates
along the batch dimension mixes stacked candidates). So each speed-up is first tried on the
real inputs against the plain forward pass: the memory format and the folding once per model
(falling back to the model's own format and modules), the stacking, prefix and shared consumer
once per layer (falling back to one plain pass per candidate); each fallback is logged once.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from gfsprune._inputs import map_tensors, run_model, tensors
from gfsprune.errors import first_line
from gfsprune.scoring.base import Evaluator
from gfsprune.scoring.delta import SharedPlusDelta
from gfsprune.scoring.prefix import Prefix
from gfsprune.surgery import build_graph, fold_batchnorms

__all__ = ["BatchedEvaluator"]

_log = logging.getLogger(__name__)


@dataclass
class BatchedEvaluator(Evaluator):
    """Candidates stacked along the batch dimension, in chunks of at most ``max_batch``,
    reusing the activations computed before the layer's first consumer and running that
    consumer on the candidates' shared channels once.

    It scores on a copy of ``model`` with the BatchNorms folded (found on ``graph``, traced
    on the first call when not given) and, on a CPU, channels-last, where the copy computes
    what ``model`` does (see the module's docstring for the fallbacks).
    """

    _net: nn.Module | None = field(default=None, init=False, repr=False)
    _channels_last: bool = field(default=False, init=False, repr=False)
    _prefixes: dict[str, Prefix] = field(default_factory=dict, init=False, repr=False)
    _captured: tuple | None = field(default=None, init=False, repr=False)
    # per layer, how many candidates the fast path was checked on; ``_plain``: it failed or
    # differed on some layer, and every later call scores one plain pass per candidate
    _checked: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _plain: bool = field(default=False, init=False, repr=False)
    _warned: set[str] = field(default_factory=set, init=False, repr=False)

    def _scoring_net(self, inputs: object) -> nn.Module:
        if self._net is None:
            self._net, self._channels_last = self._fastest_net(inputs)
        return self._net

    def _fastest_net(self, inputs: object) -> tuple[nn.Module, bool]:
        """The fastest scoring network that computes what ``model`` does on ``inputs``:
        the folded copy channels-last (on a CPU: measured faster on resnet20, 2 cores),
        else the folded copy, else ``model`` itself; and whether it runs channels-last."""
        with torch.no_grad():
            reference = run_model(self.model, inputs)
        cpu = all(t.device.type == "cpu" for t in tensors(inputs))
        try:
            example = map_tensors(inputs, lambda t: t[:1])
            with self.masks.suspended():  # a copy of the hooks would mask twice
                folded = fold_batchnorms(self.model, self.graph or build_graph(self.model, example))
        except Exception as err:  # any failure of a user's model: score it as it is
            self._fall_back("fold", f"folding its BatchNorms failed ({_reason(err)})")
            return self.model, False
        self.masks.attach(folded)
        failed = None
        for channels_last in (True, False) if cpu else (False,):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            folded.to(memory_format=memory_format)
            try:
                with torch.no_grad():
                    fast = run_model(folded, _as_format(inputs, channels_last))
                if _close(fast, reference):
                    if failed is not None:
                        self._fall_back("format", f"channels-last, it {failed}")
                    return folded, channels_last
                failed = "computes other outputs"
            except Exception as err:
                failed = f"fails ({_reason(err)})"
        self.masks.detach(folded)
        self._fall_back("fold", f"the folded copy {failed}")
        return self.model, False

    def _fall_back(self, key: str, why: str) -> None:
        """Say once per evaluator that a speed-up is off for this model, and why."""
        if key not in self._warned:
            self._warned.add(key)
            what = {
                "format": "the model in its own memory format",
                "fold": "the model as it is, without folding its BatchNorms",
                "stack": "with one plain forward pass per candidate",
            }[key]
            _log.warning("scoring %s: %s.", what, why)

    def reset(self) -> None:
        super().reset()
        if self._net is not None and self._net is not self.model:
            self.masks.detach(self._net)
        self._net, self._captured = None, None
        self._prefixes.clear()

    def __call__(self, inputs, targets, layer, keep):
        if not self._plain:
            net = self._scoring_net(inputs)  # tracing needs autograd: not in inference mode
            self._check(net, inputs, layer, keep)
        if self._plain:
            return self._one_by_one(self.model, inputs, targets, layer, keep)
        captured, self._captured = self._captured, None
        if captured is not None and (
            captured[0] != layer.name
            or captured[1] is not inputs
            or captured[2] != self.masks.version
        ):
            captured = None
        with torch.inference_mode():
            return self._score(net, inputs, targets, layer, keep, captured)

    def gradient(self, inputs, targets, layer, keep):
        """As :meth:`Evaluator.gradient`, on the scoring copy, through the part of the
        network after the layer only: the prefix runs once without autograd."""
        if not self._plain:
            net, raw = self._scoring_net(inputs), inputs
            self._check(net, inputs, layer, keep[None])
        if self._plain:
            return super().gradient(inputs, targets, layer, keep)
        inputs = _as_format(inputs, self._channels_last)
        prefix = self._prefix(net, inputs, layer)
        with torch.no_grad():  # not inference mode: the outputs enter an autograd graph
            outputs, first_input = prefix.capture(net, inputs)
        # A screen scores the same batch right after: keep the prefix's outputs for it.
        self._captured = (layer.name, raw, self.masks.version, outputs, first_input)
        keep = keep.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            self.masks.candidates(layer, keep[None]),
            prefix.replay(outputs, inputs, 1) as tiled,
        ):
            loss = self.loss_fn(run_model(net, tiled), targets)
            (grad,) = torch.autograd.grad(loss, keep)
        return grad

    def _prefix(self, net: nn.Module, inputs: object, layer) -> Prefix:
        prefix = self._prefixes.get(layer.name)
        if prefix is None:
            consumers = {net.get_submodule(c.name): c.name for c in layer.consumers}
            prefix = self._prefixes[layer.name] = Prefix(net, inputs, consumers)
        return prefix

    def _check(self, net: nn.Module, inputs: object, layer, keep: torch.Tensor) -> None:
        """On a layer's first call, the fast path (stacking, prefix, shared consumer) on up to
        two of the candidates must give the plain pass's outputs; else score plainly from now
        on. A model may mix the samples of a batch (``torch.cat`` along it, batch
        statistics), which stacked candidates would then mix too."""
        rows = keep[:2]
        if self._checked.get(layer.name, 0) >= rows.shape[0]:
            return
        self._checked[layer.name] = rows.shape[0]
        with torch.no_grad():
            plain = []
            for row in rows:
                with self.masks.candidates(layer, row[None]):
                    plain.append(run_model(self.model, inputs))
            try:
                with torch.inference_mode():
                    fast = self._stacked(net, inputs, layer, rows)
                same = all(_close(f, p) for f, p in zip(fast, plain, strict=True))
                why = f"on layer '{layer.name}', stacked candidates compute other outputs"
            except Exception as err:  # any failure of a user's model: score it plainly
                same = False
                why = f"stacking candidates fails on layer '{layer.name}' ({_reason(err)})"
        if not same:
            self._plain = True
            self._fall_back("stack", why)

    def _stacked(self, net, inputs, layer, keep, captured=None) -> list[object]:
        """The outputs of ``net`` for each row of ``keep``, by stacked passes (chunked)."""
        inputs = _as_format(inputs, self._channels_last)
        batch = tensors(inputs)[0].shape[0]
        chunk = self.chunk_size(inputs, batch)
        prefix = self._prefix(net, inputs, layer)
        if captured is None:
            outputs, first_input = prefix.capture(net, inputs)
        else:  # the gradient's capture of the same batch under the same masks
            outputs, first_input = captured[3:]
        factors = self.masks.factors(layer, keep)[prefix.first_name]
        shared = SharedPlusDelta.build(prefix.first, first_input, factors)
        parts: list[object] = []
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
            parts += _split(out, k, batch)
        return parts

    def _score(self, net, inputs, targets, layer, keep, captured) -> list[float]:
        parts = self._stacked(net, inputs, layer, keep, captured)
        return [float(self.loss_fn(part, targets)) for part in parts]


def _as_format(inputs: object, channels_last: bool) -> object:
    """``inputs`` with its 4-d tensors channels-last, if asked."""
    if not channels_last:
        return inputs
    return map_tensors(
        inputs, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    )


def _split(out: object, k: int, batch: int) -> list[object]:
    """The ``k`` candidates' outputs in a stacked output (a tensor, or a dict/tuple of them):
    every tensor with ``k * batch`` rows cut into ``k`` slices of ``batch``."""

    def part(i: int) -> object:
        return map_tensors(
            out,
            lambda t: t[i * batch : (i + 1) * batch] if t.dim() and t.shape[0] == k * batch else t,
        )

    return [part(i) for i in range(k)]


def _close(a: object, b: object) -> bool:
    """Whether the outputs ``a`` and ``b`` (tensors, or dicts/tuples of them) are equal up to
    float rounding: float32's, or TF32's on an accelerator (cuDNN's default for
    convolutions), relative to each tensor's largest magnitude."""
    ta, tb = tensors(a), tensors(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return False
        if not y.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        eps = torch.finfo(y.dtype).eps
        if y.device.type != "cpu" and y.dtype == torch.float32:
            eps = 2.0**-10
        tol = max(1e-4, 10 * eps)
        y = y.double()
        x = x.double()
        scale = float(y.abs().nan_to_num(0, 0, 0).max()) if y.numel() else 0.0
        if not torch.allclose(x, y, rtol=tol, atol=tol * scale, equal_nan=True):
            return False
    return True


def _reason(err: Exception) -> str:
    return first_line(err) or type(err).__name__
