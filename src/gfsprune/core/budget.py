"""Splitting a MACs or parameter budget into per-layer widths.

The split is uniform: every channel layer still to be selected keeps the same fraction of its
channels (rounded, at least one), found by bisection on a cost model, then single channels are
added or removed to land as close to the budget as the layers' granularity allows. Uniform
widths are the simplest honest baseline; greedy selection decides *which* channels fill them.

The split is re-done after every layer with that layer's actual picks, so the budget is met
even where which channels are kept changes the cost (a group joined by a concatenation keeps
more or fewer channels of each concatenated part). The cost model is exact for convolutions,
linear layers and norms: a module's MACs and weights scale with the kept share of its output
channels times that of its input positions, its biases and norm parameters with the former.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gfsprune._inputs import run_model
from gfsprune.errors import ConfigError
from gfsprune.surgery import ChannelLayer
from gfsprune.targets import Macs, Params

__all__ = ["CostModel", "allocate_widths", "check_reachable"]


@dataclass(frozen=True)
class _Term:
    macs: float
    weights: float  # parameters with two or more dimensions
    vectors: float  # biases and norm parameters
    out: tuple[int, np.ndarray] | None  # (layer, channels) this module's outputs carry
    inputs: tuple[tuple[int, np.ndarray, float], ...]  # (layer, channels, share of positions)


class CostModel:
    """Predicts the MACs and parameters of a model pruned to given per-channel keep shares.

    A keep vector per layer holds, for each channel, 1 (kept), 0 (removed) or, for a layer
    not yet selected, its planned width divided by its full width.
    """

    def __init__(self, model: nn.Module, example_inputs: object, layers: Sequence[ChannelLayer]):
        flops = _flops_per_module(model, example_inputs)
        self.widths = np.array([layer.width for layer in layers], dtype=float)
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
            elif own or macs:
                self.terms.append(_Term(macs, weights, vectors, outputs.get(name), parts))
        self.full = [np.ones(int(w)) for w in self.widths]
        self.full_macs, self.full_params = self.predict(self.full)

    def predict(self, keep: Sequence[np.ndarray]) -> tuple[float, float]:
        """``(macs, params)`` for per-layer keep vectors."""
        macs, params = self.fixed_macs, self.fixed_params
        for t in self.terms:
            out = 1.0 if t.out is None else float(keep[t.out[0]][t.out[1]].mean())
            inp = 1.0 - sum(share for _, _, share in t.inputs)
            inp += sum(share * float(keep[i][root].mean()) for i, root, share in t.inputs)
            macs += t.macs * out * inp
            params += t.weights * out * inp + t.vectors * out
        return macs, params

    def ratio(self, keep: Sequence[np.ndarray], target: Macs | Params) -> float:
        """The fraction of the original cost (of the target's kind) for the keep vectors."""
        macs, params = self.predict(keep)
        return macs / self.full_macs if isinstance(target, Macs) else params / self.full_params


def _flops_per_module(model: nn.Module, example_inputs: object) -> dict[str, int]:
    """FLOPs of each module's own calls by qualified name; ``""`` holds those of no module."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run_model(model, example_inputs)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    per_module = {
        key[len(prefix) + 1 :]: sum(ops.values())
        for key, ops in counts.items()
        if key.startswith(prefix + ".")
    }
    leaves = {n for n, m in model.named_modules() if not any(True for _ in m.children())}
    leaf_flops = {n: f for n, f in per_module.items() if n in leaves}
    leaf_flops[""] = counter.get_total_flops() - sum(leaf_flops.values())
    return leaf_flops


def check_reachable(cost: CostModel, target: Macs | Params) -> None:
    """Refuse a budget below the cost of one channel per layer, naming the smallest ratio."""
    smallest = cost.ratio([np.full(int(w), 1 / w) for w in cost.widths], target)
    if target.ratio < smallest - 1e-9:
        raise ConfigError(
            f"{type(target).__name__}({target.ratio}) cannot be reached: the layers gfsprune "
            "does not prune (ignored ones, the classifier) and one channel per pruned layer "
            f"already cost {smallest:.4f} of the original; ask for a ratio of at least "
            f"{smallest:.4f}."
        )


def allocate_widths(
    cost: CostModel, target: Macs | Params, *, selected: Mapping[int, Sequence[int]] | None = None
) -> list[int]:
    """Uniform widths for the layers not yet selected that meet ``target.ratio`` best.

    Args:
        cost: The model's cost model.
        target: The budget.
        selected: Layer index to the channels already kept there (fixed).

    Returns:
        A width per layer (for selected layers, the number of kept channels); one channel per
        open layer where even that costs more than the target.
    """
    selected = selected or {}
    full = cost.widths
    fixed = {
        i: np.isin(np.arange(int(full[i])), list(kept)).astype(float)
        for i, kept in selected.items()
    }
    open_layers = [i for i in range(len(full)) if i not in fixed]

    def keep_of(widths: np.ndarray) -> list[np.ndarray]:
        return [
            fixed[i] if i in fixed else np.full(int(full[i]), widths[i] / full[i])
            for i in range(len(full))
        ]

    def error(widths: np.ndarray) -> float:
        return cost.ratio(keep_of(widths), target) - target.ratio

    def widths_at(share: float) -> np.ndarray:
        widths = np.clip(np.round(share * full), 1, full)
        for i, keep in fixed.items():
            widths[i] = keep.sum()
        return widths

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if error(widths_at(mid)) < 0 else (lo, mid)
    widths = widths_at(lo)
    # Single-channel moves that bring the cost closer to the target, widest layers first.
    by_width = sorted(open_layers, key=lambda i: -full[i])
    current = abs(error(widths))
    while True:
        step = -1 if error(widths) > 0 else 1
        for i in by_width:
            trial = widths.copy()
            trial[i] += step
            if 1 <= trial[i] <= full[i] and abs(error(trial)) < current - 1e-12:
                widths, current = trial, abs(error(trial))
                break
        else:
            return [int(w) for w in widths]
