"""The default cost model: MACs and parameters of a model pruned to given per-channel keep shares.

It is exact for convolutions, linear layers and norms: a module's MACs and weights scale with
the kept share of its output channels times that of its input positions, its biases and norm
parameters with the former. Which channels are kept matters where a group is joined by a
concatenation (each concatenated part feeds other modules). An attention module's own
products (no module of their own) scale with its kept heads: it is a producer of its head
layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from gfsprune.core.cost import CostModel
from gfsprune.core.counting import count, count_flops
from gfsprune.surgery import ChannelLayer

__all__ = ["ComputeCost"]


@dataclass(frozen=True)
class _Term:
    name: str  # the module's qualified name
    macs: float
    weights: float  # parameters with two or more dimensions
    vectors: float  # biases and norm parameters
    out: tuple[int, np.ndarray] | None  # (layer, channels) this module's outputs carry
    inputs: tuple[tuple[int, np.ndarray, float], ...]  # (layer, channels, share of positions)


class ComputeCost(CostModel):
    """Predicts ``"macs"`` and ``"params"`` of a model pruned to given keep shares (the
    metrics :func:`~gfsprune.core.counting.count` gives the real model)."""

    def __init__(self, model: nn.Module, example_inputs: object, layers: Sequence[ChannelLayer]):
        super().__init__(layers)
        producers = {p.name for layer in layers for p in layer.producers}
        flops, rest = _flops_per_module(model, example_inputs, producers)
        outputs: dict[str, tuple[int, np.ndarray]] = {}
        inputs: dict[str, list[tuple[int, np.ndarray, float]]] = {}
        for i, layer in enumerate(layers):
            for p in layer.producers:
                outputs[p.name] = (i, np.array(p.root))
            for c in layer.consumers:
                inputs.setdefault(c.name, []).append((i, c.root.numpy(), float(len(c.index))))
        self.terms: list[_Term] = []
        self.fixed_macs = flops.pop("", 0) / 2
        self.fixed_params = 0.0
        #: MACs no pruned layer changes, by the module that spends them (its own operations
        #: outside its children for a container; ``""``: the model's own), the largest first.
        self.fixed_parts = {n: f / 2 for n, f in rest.items() if f > 0}
        for name, module in model.named_modules():
            own = list(module.parameters(recurse=False))
            macs = flops.get(name, 0) / 2
            weights = float(sum(p.numel() for p in own if p.dim() > 1))
            vectors = float(sum(p.numel() for p in own if p.dim() <= 1))
            size = getattr(module, "in_features", getattr(module, "in_channels", 1))
            parts = tuple((i, root, n / size) for i, root, n in inputs.get(name, []))
            if name not in outputs and not parts:
                self.fixed_macs += macs
                self.fixed_params += weights + vectors
                if macs > 0:
                    self.fixed_parts[name] = macs
            elif own or macs:
                self.terms.append(_Term(name, macs, weights, vectors, outputs.get(name), parts))
        self.fixed_parts = dict(sorted(self.fixed_parts.items(), key=lambda kv: -kv[1]))
        self._vectorize()

    def _vectorize(self) -> None:
        """Index arrays that let :meth:`predict` evaluate every term at once (the allocator
        calls it thousands of times on networks of hundreds of layers)."""
        offsets = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        references: list[np.ndarray] = []  # flat channel positions of each mean taken

        def reference(layer: int, root: np.ndarray) -> int:
            references.append(offsets[layer] + np.asarray(root, dtype=np.int64))
            return len(references) - 1

        terms = self.terms
        self._out = np.array([-1 if t.out is None else reference(*t.out) for t in terms])
        inputs = [
            (k, reference(i, root), share)
            for k, t in enumerate(terms)
            for i, root, share in t.inputs
        ]
        self._in_term = np.array([k for k, _, _ in inputs], dtype=np.int64)
        self._in_ref = np.array([r for _, r, _ in inputs], dtype=np.int64)
        self._in_share = np.array([share for _, _, share in inputs], dtype=float)
        self._in_base = 1.0 - np.bincount(
            self._in_term, weights=self._in_share, minlength=len(terms)
        )
        lengths = np.array([len(r) for r in references], dtype=np.int64)
        self._gather = np.concatenate(references) if references else np.zeros(0, np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._lengths = lengths.astype(float)
        self._macs = np.array([t.macs for t in terms], dtype=float)
        self._weights = np.array([t.weights for t in terms], dtype=float)
        self._vectors = np.array([t.vectors for t in terms], dtype=float)

    def predict_flat(self, flat: np.ndarray) -> dict[str, float]:
        if not self.terms:
            return {"macs": self.fixed_macs, "params": self.fixed_params}
        out, inp = self.shares(flat)
        macs = self.fixed_macs + float((self._macs * out * inp).sum())
        params = self.fixed_params + float(((self._weights * inp + self._vectors) * out).sum())
        return {"macs": macs, "params": params}

    def shares(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept share of each term's (:attr:`terms`) output channels and of its input
        positions, for keep vectors concatenated as :meth:`predict_flat` takes them."""
        means = np.add.reduceat(flat[self._gather], self._starts) / self._lengths
        out = np.where(self._out >= 0, means[np.maximum(self._out, 0)], 1.0)
        inp = self._in_base + np.bincount(
            self._in_term, weights=self._in_share * means[self._in_ref], minlength=len(self.terms)
        )
        return out, inp

    def measure(self, model: nn.Module, example_inputs: object) -> dict[str, float]:
        macs, params = count(model, example_inputs)
        return {"macs": macs, "params": params}

    def neighbours(self) -> list[set[int]]:
        linked: list[set[int]] = [set() for _ in self.widths]
        for term in self.terms:
            layers = {i for i, _, _ in term.inputs} | ({term.out[0]} if term.out else set())
            for i in layers:
                linked[i] |= layers - {i}
        return linked

    def fixed(self, metric: str) -> dict[str, float]:
        """MACs no pruned layer changes, by the module that spends them (its own operations
        outside its children for a container; ``""``: the model's own), the largest first."""
        return dict(self.fixed_parts) if metric == "macs" else {}


def _flops_per_module(
    model: nn.Module, example_inputs: object, containers: Iterable[str] = ()
) -> tuple[dict[str, int], dict[str, int]]:
    """FLOPs of each leaf module's calls and of the ``containers``' own operations (outside
    their leaves), by qualified name, ``""`` holding the rest; and that rest by the module
    whose own operations (outside its children) they are, ``""`` for the model's."""
    counter = count_flops(model, example_inputs)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    per_module = {
        key[len(prefix) + 1 :]: sum(ops.values())
        for key, ops in counts.items()
        if key.startswith(prefix + ".")
    }
    per_module[""] = counter.get_total_flops()
    children = {
        name: [f"{name}.{c}" if name else c for c, _ in module.named_children()]
        for name, module in model.named_modules()
    }
    leaves = {n for n, kids in children.items() if not kids}
    leaf_flops = {n: f for n, f in per_module.items() if n in leaves}
    for name in set(containers) - leaves:
        inner = sum(f for n, f in leaf_flops.items() if n.startswith(name + "."))
        leaf_flops[name] = per_module.get(name, 0) - inner
    leaf_flops[""] = per_module[""] - sum(leaf_flops.values())
    rest = {
        name: per_module.get(name, 0) - sum(per_module.get(c, 0) for c in kids)
        for name, kids in children.items()
        if kids and name not in containers
    }
    return leaf_flops, rest
