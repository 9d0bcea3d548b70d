"""One channel layer's reconstruction problem: its consumers' outputs as a function of its
items, from the Gram statistics (:mod:`~gfsprune.scoring.reconstruction.gram`).

The error is the squared distance of the consumers' outputs (with the layer's items scaled by
``m``, or the consumers' weights re-solved) from the unpruned network's, summed over the
consumers and the calibration rows, each output channel weighted by the square of the
per-channel scale of the BatchNorm that follows its consumer, where one does (what the next
layer sees). With the consumers' weights kept, it is a quadratic form in the item factors
``m`` (:class:`QuadraticForm`): the paper's two-layer setting, each item a neuron of the
mean-field sum ``f_N``. With a consumer's input factors ``f`` (``f_q`` = the item's factor at
the layer's positions, 1 at the others) and ``v_o = W_o * f``:

    error = sum_o w_o (v_o' gram v_o - 2 v_o' cross_o + energy_o)
          = f' (gram * W' diag(w) W) f - 2 f' rowsum(cross * (W' diag(w))) + w . energy

Positions of other layers that are already removed (their input factor 0) drop out.

A consumer without a bias that a BatchNorm follows may take an intercept instead (the column
of ones of its statistics; the problem's ``intercepts``): a removed channel's mean
contribution to the consumer's outputs is then re-fitted as a per-output constant and folded
into the BatchNorm's running mean, which in evaluation mode subtracts it (FLAP's bias
compensation, here solved jointly with the weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gfsprune.scoring.reconstruction.gram import ConsumerStats, taps, weight_matrix
from gfsprune.surgery import ChannelLayer

__all__ = [
    "AUTO_RIDGE",
    "CV_RIDGES",
    "Block",
    "LayerProblem",
    "QuadraticForm",
    "Ridge",
    "output_weights",
]

#: A least-squares damping relative to the mean squared input, or ``"auto"``
#: (:meth:`LayerProblem.ridge_of`).
Ridge = float | Literal["auto"]
#: ``"auto"``'s damping of a well-posed least squares (at least
#: :data:`~gfsprune.scoring.reconstruction.gram.WELL_POSED` rows per unknown).
AUTO_RIDGE = 1e-3
#: The dampings ``"auto"`` chooses among by cross-validation otherwise.
CV_RIDGES = tuple(10.0**k for k in range(-6, 2))


@dataclass(frozen=True)
class QuadraticForm:
    """``error(m) = m' gram m - 2 linear' m + constant`` over a layer's item factors ``m``.

    Attributes:
        gram: ``(n, n)`` float64, the items' contributions' inner products.
        linear: ``(n,)`` float64, their inner products with what the items must reproduce.
        constant: The error with every item removed.
    """

    gram: torch.Tensor
    linear: torch.Tensor
    constant: float

    def error(self, factors: torch.Tensor) -> float:
        """The error with item factors ``factors`` (``(n,)``)."""
        m = factors.to(self.gram)
        return float(m @ self.gram @ m - 2 * self.linear @ m) + self.constant


@dataclass(frozen=True)
class Block:
    """One least-squares problem of a consumer: some of its outputs (one group of a grouped
    convolution, or all) and the live input positions they read.

    Attributes:
        consumer: The consumer's name.
        outputs: Its output channels in the block, ``(o,)``.
        layer: Positions that carry the layer's channels, ``(L,)`` (indices into ``Q``).
        items: The item of each of those positions, ``(L,)``.
        fixed: Live positions that do not (other layers' kept channels, the bias), ``(F,)``.
    """

    consumer: str
    outputs: torch.Tensor
    layer: torch.Tensor
    items: torch.Tensor
    fixed: torch.Tensor


def output_weights(module: nn.Module, norm: nn.Module | None) -> torch.Tensor:
    """Each output channel's weight in the error: the square of ``norm``'s per-channel scale
    (``gamma / sqrt(var + eps)``, a BatchNorm right after the consumer), or ones."""
    out = module.weight.shape[0]
    if norm is None:
        return torch.ones(out, dtype=torch.float64, device=module.weight.device)
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
    return scale.pow(2)


class LayerProblem:
    """A channel layer's reconstruction from its consumers' statistics.

    Args:
        layer: The channel layer (at full width, factor 1, when the statistics were taken).
        stats: Each consumer's statistics.
        modules: Each consumer's module (in the network the statistics' inputs came from).
        factors: Each consumer's current input factors (:meth:`Masks.input_factors`): inputs
            at 0 belong to removed channels of other layers and drop out.
        norms: The BatchNorm right after a consumer, where there is one.
        intercepts: Consumers without a bias whose least squares also fits an intercept,
            each to its BatchNorm's (in ``norms``) running mean in the unpruned network: the
            intercept is that mean minus the BatchNorm's current one, and a refit writes it
            there.
    """

    def __init__(
        self,
        layer: ChannelLayer,
        stats: Mapping[str, ConsumerStats],
        modules: Mapping[str, nn.Module],
        factors: Mapping[str, torch.Tensor],
        norms: Mapping[str, nn.Module] | None = None,
        intercepts: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.layer = layer
        self.stats = dict(stats)
        self.modules = dict(modules)
        self.norms = dict(norms or {})
        self.intercepts = dict(intercepts or {})
        if any(self.modules[n].bias is not None or n not in self.norms for n in self.intercepts):
            raise ValueError("an intercept is for a consumer without a bias, before a BatchNorm")
        self.weights = {n: output_weights(m, self.norms.get(n)) for n, m in self.modules.items()}
        self.blocks = [b for c in sorted(self.modules) for b in self._blocks(c, factors[c])]
        self._cv: dict[tuple[int, bytes], float] = {}  # cross-validated dampings

    @property
    def n_items(self) -> int:
        """The number of items."""
        return self.layer.n_items

    def _blocks(self, name: str, factors: torch.Tensor) -> list[Block]:
        module = self.modules[name]
        k = taps(module)
        q = self.stats[name].gram.shape[0]
        device = self.stats[name].gram.device
        item_of = torch.full((self.layer.width,), -1, dtype=torch.long)
        for item, channels in enumerate(self.layer.item_index.tolist()):
            item_of[channels] = item
        per_input = torch.full((factors.numel(),), -1, dtype=torch.long)  # -1: not the layer's
        for c in self.layer.consumers:
            if c.name == name:
                per_input[c.index] = item_of[c.root]
        item = per_input.repeat_interleave(k)  # (inputs * taps,)
        live = factors.detach().cpu().repeat_interleave(k) != 0
        constant = module.bias is not None or name in self.intercepts  # the column of ones
        item = torch.cat([item, item.new_full((1,), -1)])
        live = torch.cat([live, torch.tensor([constant])])
        assert item.numel() == q, "the statistics do not match the consumer"
        groups = 1 if isinstance(module, nn.Linear) else module.groups
        out, inputs = module.weight.shape[0], factors.numel()
        blocks = []
        for g in range(groups):
            reads = torch.zeros(q, dtype=torch.bool)
            reads[g * inputs // groups * k : (g + 1) * inputs // groups * k] = True
            reads[-1] = True
            mine = reads & (live | (item >= 0))
            layer_pos = (mine & (item >= 0)).nonzero().flatten()
            fixed = (mine & (item < 0)).nonzero().flatten()
            blocks.append(
                Block(
                    consumer=name,
                    outputs=torch.arange(g * out // groups, (g + 1) * out // groups, device=device),
                    layer=layer_pos.to(device),
                    items=item[layer_pos].to(device),
                    fixed=fixed.to(device),
                )
            )
        return blocks

    def form(self) -> QuadraticForm:
        """The error as a quadratic form in the item factors, the consumers' weights kept."""
        n = self.n_items
        device = next(iter(self.stats.values())).gram.device
        gram = torch.zeros(n, n, dtype=torch.float64, device=device)
        linear = torch.zeros(n, dtype=torch.float64, device=device)
        constant = 0.0
        for b in self.blocks:
            s, w = self.stats[b.consumer], self.weights[b.consumer][b.outputs]
            weight = self._weight_matrix(b.consumer).to(device)[b.outputs]  # (o, Q)
            pos = torch.cat([b.layer, b.fixed])
            wl = weight[:, pos]  # (o, P)
            h = s.gram[pos][:, pos] * (wl.T @ (w[:, None] * wl))  # (P, P)
            d = (s.cross[pos][:, b.outputs] * (wl.T * w)).sum(1)  # (P,)
            size = len(b.layer)
            rows = torch.zeros(n, len(pos), dtype=torch.float64, device=device)
            rows.index_add_(0, b.items, h[:size])
            gram.index_add_(1, b.items, rows[:, :size])
            linear.index_add_(0, b.items, d[:size] - h[:size, size:].sum(1))
            constant += float(w @ s.energy[b.outputs] - 2 * d[size:].sum() + h[size:, size:].sum())
        return QuadraticForm(gram, linear, constant)

    def _weight_matrix(self, name: str) -> torch.Tensor:
        """:func:`weight_matrix` of consumer ``name``, its intercept last where it has one."""
        module, intercept = self.modules[name], None
        if name in self.intercepts:
            intercept = self.intercepts[name].double() - self.norms[name].running_mean.double()
        return weight_matrix(module, intercept)

    def ridge_of(self, block: Block, ridge: Ridge, positions: torch.Tensor | None = None) -> float:
        """The damping of ``block``'s least squares on ``positions`` (default: all its live
        ones): ``ridge`` times the mean of its live positions' squared norms (and a 1e-12
        relative floor for dead inputs). ``"auto"``: :data:`AUTO_RIDGE`, or where the
        consumer's statistics keep a fold (few rows per unknown), the one of
        :data:`CV_RIDGES` with the least error under two-fold cross-validation."""
        s = self.stats[block.consumer]
        pos = torch.cat([block.layer, block.fixed])
        if ridge == "auto":
            ridge = AUTO_RIDGE
            if s.fold is not None and len(pos):
                ridge = self._cross_validated(block, pos if positions is None else positions)
        mean = float(s.gram.diagonal()[pos].mean()) if len(pos) else 0.0
        return (ridge + 1e-12) * mean + 1e-300

    def _cross_validated(self, block: Block, kept: torch.Tensor) -> float:
        """The relative damping of :data:`CV_RIDGES` whose least squares on the positions
        ``kept``, fitted on one fold of the rows, reproduces the other best (both ways)."""
        key = (id(block), kept.cpu().numpy().tobytes())
        if key in self._cv:
            return self._cv[key]
        s = self.stats[block.consumer]
        assert s.fold is not None
        w, out = self.weights[block.consumer][block.outputs], block.outputs
        pos = torch.cat([block.layer, block.fixed])
        folds = (s.fold, s.rest())
        errors = torch.zeros(len(CV_RIDGES), dtype=torch.float64)
        for fit, test in (folds, folds[::-1]):
            scale = float(fit.gram.diagonal()[pos].mean()) + 1e-300
            values, vectors = torch.linalg.eigh(fit.gram[kept][:, kept])
            coef = vectors.T @ fit.cross[kept][:, out]  # (p, o), in the eigenbasis
            gram = vectors.T @ test.gram[kept][:, kept] @ vectors
            cross = vectors.T @ test.cross[kept][:, out]
            for i, r in enumerate(CV_RIDGES):
                m = coef / (values + (r + 1e-12) * scale)[:, None]
                per_output = ((gram @ m) * m).sum(0) - 2 * (cross * m).sum(0)
                errors[i] += float(w @ (per_output + test.energy[out]))
        self._cv[key] = best = CV_RIDGES[int(torch.argmin(errors))]
        return best

    def solve(self, block: Block, kept: torch.Tensor, ridge: Ridge) -> torch.Tensor:
        """The least-squares weights of ``block``'s outputs on the positions ``kept``:
        ``(o, len(kept))``, damped by :meth:`ridge_of`."""
        s = self.stats[block.consumer]
        a = s.gram[kept][:, kept]
        lam = self.ridge_of(block, ridge, kept)
        a = a + lam * torch.eye(len(kept), dtype=a.dtype, device=a.device)
        return torch.linalg.solve(a, s.cross[kept][:, block.outputs]).T

    def error_of(self, block: Block, weight: torch.Tensor, kept: torch.Tensor) -> float:
        """The (undamped) error of ``block``'s outputs computed with ``weight`` (``(o,
        len(kept))``) on the positions ``kept``."""
        s, w = self.stats[block.consumer], self.weights[block.consumer][block.outputs]
        a, c = s.gram[kept][:, kept], s.cross[kept][:, block.outputs]
        per_output = ((weight @ a) * weight).sum(1) - 2 * (weight * c.T).sum(1)
        return float(w @ (per_output + s.energy[block.outputs]))

    def kept_positions(self, block: Block, items: Sequence[int]) -> torch.Tensor:
        """``block``'s positions with ``items`` kept: the fixed ones and those items'."""
        chosen = torch.zeros(self.n_items, dtype=torch.bool, device=block.items.device)
        chosen[torch.as_tensor(list(items), dtype=torch.long)] = True
        return torch.cat([block.fixed, block.layer[chosen[block.items]]])

    def underdetermined(self, items: Sequence[int]) -> dict[str, tuple[int, int]]:
        """The consumers whose least squares, with ``items`` kept, has fewer calibration rows
        than unknowns (per output) and a damping not chosen by cross-validation (no fold):
        ``{consumer: (rows, unknowns)}``."""
        found = {}
        for b in self.blocks:
            s = self.stats[b.consumer]
            rows, unknowns = s.rows, len(self.kept_positions(b, items))
            if rows < unknowns and s.fold is None:
                found[b.consumer] = (rows, max(unknowns, found.get(b.consumer, (0, 0))[1]))
        return found

    def refit(self, items: Sequence[int], scale: float, *, ridge: Ridge = 1e-4) -> list[str]:
        """Re-solve the consumers' weights for ``items`` kept (their inputs multiplied by
        ``scale`` in the masked network) by least squares, in place, wherever that lowers
        a consumer's error (on these statistics). Returns the consumers changed."""
        changed = []
        for name in sorted(self.modules):
            blocks = [b for b in self.blocks if b.consumer == name]
            module = self.modules[name]
            current = self._weight_matrix(name).to(self.stats[name].gram.device)
            solved = current.clone()
            before = after = 0.0
            for b in blocks:
                kept = self.kept_positions(b, items)
                old = current[b.outputs][:, kept].clone()
                old[:, len(b.fixed) :] *= scale  # the masked inputs carry the scale
                new = self.solve(b, kept, ridge)
                before += self.error_of(b, old, kept)
                after += self.error_of(b, new, kept)
                new[:, len(b.fixed) :] /= scale
                solved[b.outputs[:, None], kept[None]] = new
            if after < before:
                _assign(module, solved)
                if name in self.intercepts:  # BatchNorm(y + c) subtracts its mean from y + c
                    mean = self.norms[name].running_mean
                    with torch.no_grad():
                        mean.copy_((self.intercepts[name].double() - solved[:, -1]).to(mean))
                changed.append(name)
        return changed


def _assign(module: nn.Module, dense: torch.Tensor) -> None:
    """Write ``dense`` (``(out, Q)``, :func:`weight_matrix`'s layout) into ``module`` (its
    last column into the bias, where there is one)."""
    with torch.no_grad():
        if module.bias is not None:
            module.bias.copy_(dense[:, -1].to(module.bias))
        dense = dense[:, :-1]
        weight = module.weight
        if isinstance(module, nn.Linear):
            weight.copy_(dense.to(weight))
            return
        out, per_group = weight.shape[:2]
        groups, k = module.groups, taps(module)
        blocks = dense.reshape(out, groups, per_group * k)
        own = torch.stack(
            [blocks[g * (out // groups) : (g + 1) * (out // groups), g] for g in range(groups)]
        )  # (groups, out / groups, per_group * taps)
        weight.copy_(own.reshape(weight.shape).to(weight))
