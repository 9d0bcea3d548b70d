"""Greedy forward selection on a layer's reconstruction error, every item scored in closed form.

A *path* holds the items selected so far and scores every candidate at once: the error if it
were added next. Four ways to set the kept items' factors (``SCALES``):

- ``"one"``: factor 1 (the consumers' weights as trained);
- ``"mean-field"``: ``n / k`` with ``k`` of ``n`` items kept, the paper's average (section 2);
- ``"best"``: the scalar that minimises the error, in closed form;
- ``"refit"``: the consumers' weights re-solved by least squares at every step (fully
  corrective: forward stepwise regression, group orthogonal matching pursuit).

The first three run on the :class:`~gfsprune.scoring.reconstruction.problem.QuadraticForm`: with
``g = G 1_S``, ``q = 1_S' G 1_S`` and ``s = 1_S' b`` kept up to date, adding ``j`` gives
``q + 2 g_j + G_jj`` and ``s + b_j``, so a step costs O(items). ``refit`` keeps, per block,
the damped Gram matrix of the layer's positions with the selected ones (and the consumer's
other inputs) projected out (a Schur complement ``K``) and the cross terms likewise (``U``);
adding item ``j`` (positions ``P``) lowers the error by ``sum_o w_o u_o' K_PP^-1 u_o`` with
``u = U_P``, and is a rank-``|P|`` update of ``K`` and ``U`` (no fresh solve per candidate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from gfsprune.errors import ConfigError
from gfsprune.scoring.reconstruction.problem import Block, LayerProblem, QuadraticForm, Ridge

__all__ = ["SCALES", "CorrectivePath", "Path", "ScaledPath", "greedy", "make_path", "scorer"]

#: The ways a path sets the kept items' factors (see the module's docstring).
SCALES = ("one", "mean-field", "best", "refit")


class Path(ABC):
    """Greedy selection's state on one layer: the items kept so far, in order."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.selected: list[int] = []

    @abstractmethod
    def errors(self) -> torch.Tensor:
        """The error after adding each item (``(n_items,)``; selected items: ``inf``)."""

    @abstractmethod
    def add(self, item: int) -> None:
        """Keep ``item`` next."""

    @property
    @abstractmethod
    def error(self) -> float:
        """The error with the items selected so far."""

    @property
    def scale(self) -> float:
        """The factor on the kept items' channels in the masked network."""
        return 1.0

    def _taken(self, values: torch.Tensor) -> torch.Tensor:
        values[self.selected] = torch.inf
        return values


class ScaledPath(Path):
    """A path on the quadratic form, the kept items' factors set by ``scale`` (``"one"``,
    ``"mean-field"`` or ``"best"``)."""

    def __init__(self, form: QuadraticForm, scale: str) -> None:
        super().__init__(len(form.linear))
        self.form, self.mode = form, scale
        self._g = torch.zeros_like(form.linear)  # G 1_S
        self._q = 0.0  # 1_S' G 1_S
        self._s = 0.0  # 1_S' b

    def _error(self, q: torch.Tensor, s: torch.Tensor, k: int) -> torch.Tensor:
        c = self.form.constant
        if self.mode == "one":
            return q - 2 * s + c
        if self.mode == "mean-field":
            a = self.n_items / k
            return a * a * q - 2 * a * s + c
        # best: alpha = s / q (at least 0: a negative factor would flip the channels)
        gain = torch.where(q > 0, s.clamp(min=0).pow(2) / q.clamp(min=1e-300), 0.0)
        return c - gain

    def errors(self) -> torch.Tensor:
        g = self.form.gram
        q = self._q + 2 * self._g + g.diagonal()
        s = self._s + self.form.linear
        return self._taken(self._error(q, s, len(self.selected) + 1))

    def add(self, item: int) -> None:
        g = self.form.gram
        self._q += float(2 * self._g[item] + g[item, item])
        self._s += float(self.form.linear[item])
        self._g += g[:, item]
        self.selected.append(item)

    @property
    def error(self) -> float:
        if not self.selected:
            return self.form.constant
        q, s = (torch.tensor(v, dtype=torch.float64) for v in (self._q, self._s))
        return float(self._error(q, s, len(self.selected)))

    @property
    def scale(self) -> float:
        if self.mode == "mean-field" and self.selected:
            return self.n_items / len(self.selected)
        if self.mode == "best" and self._q > 0:
            return max(self._s, 0.0) / self._q
        return 1.0


class _Residual:
    """One block's state on a corrective path: ``K`` and ``U`` over the layer's positions,
    the consumer's other inputs (and the selected items) projected out.

    Rows are item-major: each live item owns ``p`` consecutive rows (its positions; padded
    with inert rows, ``K`` = identity and ``U`` = 0, where items have fewer), so that every
    item's block of ``K`` and ``U`` is a view, not a gather.
    """

    def __init__(self, problem: LayerProblem, block: Block, ridge: Ridge) -> None:
        s = problem.stats[block.consumer]
        lam = problem.ridge_of(block, ridge)
        device = s.gram.device
        counts = torch.bincount(block.items.cpu(), minlength=problem.n_items)
        self.items = counts.nonzero().flatten().to(device)  # the live items, in row order
        self.p = int(counts.max()) if len(block.items) else 0
        # each live item's positions (indices into block.layer), padded with -1: (m, p)
        order = torch.argsort(block.items, stable=True)
        present = counts[counts > 0].to(device)
        slot = torch.arange(len(order), device=device) - torch.repeat_interleave(
            torch.cumsum(present, 0) - present, present
        )
        row = torch.searchsorted(self.items, block.items[order])
        slots = torch.full((len(self.items), self.p), -1, dtype=torch.long, device=device)
        slots[row, slot] = order
        slots = slots.flatten()
        real = slots >= 0
        pos = torch.cat([block.layer[slots.clamp(min=0)], block.fixed])
        a = s.gram[pos][:, pos]
        a = a + lam * torch.eye(len(pos), dtype=a.dtype, device=device)
        c = s.cross[pos][:, block.outputs]
        size = len(slots)
        pad = ~real
        a[:size][pad] = 0.0
        a[:, :size][:, pad] = 0.0
        a[:size, :size][pad, pad] = 1.0
        c[:size][pad] = 0.0
        self.w = problem.weights[block.consumer][block.outputs]
        k, u = a[:size, :size], c[:size]
        self.error = float(self.w @ s.energy[block.outputs])
        if len(block.fixed):
            chol = torch.linalg.cholesky(a[size:, size:])
            ka = a[:size, size:]
            solved = torch.cholesky_solve(torch.cat([ka.T, c[size:]], 1), chol)
            k = k - ka @ solved[:, :size]
            u = u - ka @ solved[:, size:]
            self.error -= float(self.w @ (c[size:] * solved[:, size:]).sum(0))
        self.k, self.u = k.contiguous(), u.contiguous()
        self._alive = torch.ones(len(self.items), dtype=torch.bool, device=device)
        self._n = problem.n_items

    def gains(self) -> torch.Tensor:
        """How much adding each item lowers this block's error, ``(n_items,)``."""
        out = torch.zeros(self._n, dtype=self.k.dtype, device=self.k.device)
        m, p = len(self.items), self.p
        if m == 0:
            return out
        kpp = self.k.view(m, p, m, p).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (m, p, p)
        up = self.u.view(m, p, -1)  # (m, p, o)
        # sum_o w_o u_o' K^-1 u_o = trace(K^-1 M), M = sum_o w_o u_o u_o': (m, p, p) systems
        # to solve instead of (m, p, o)
        mm = torch.bmm(up * self.w, up.transpose(1, 2))
        chol, info = torch.linalg.cholesky_ex(kpp)
        gain = torch.cholesky_solve(mm, chol).diagonal(dim1=1, dim2=2).sum(1)
        out[self.items] = torch.where((info == 0) & self._alive, gain, 0.0)
        return out

    def add(self, item: int) -> float:
        """Project ``item``'s positions out; returns the error's decrease."""
        hit = ((self.items == item) & self._alive).nonzero().flatten()
        if len(hit) == 0:
            return 0.0
        r, p = int(hit[0]), self.p
        pos = slice(r * p, (r + 1) * p)
        kp, up = self.k[:, pos].clone(), self.u[pos].clone()  # (L, p), (p, o)
        chol, info = torch.linalg.cholesky_ex(kp[pos])
        gain = 0.0
        if not int(info):  # else: positions already spanned (a dead or duplicated input)
            solved = torch.cholesky_solve(torch.cat([kp.T, up], 1), chol)
            gain = float(self.w @ (up * solved[:, kp.shape[0] :]).sum(0))
            self.k.addmm_(kp, solved[:, : kp.shape[0]], alpha=-1)
            self.u.addmm_(kp, solved[:, kp.shape[0] :], alpha=-1)
            self.error -= gain
        # the item's positions are spanned now (their rows of K and U are zero): drop them
        # once a quarter of the rows are such, so that the updates shrink with the path
        self._alive[r] = False
        if (~self._alive).sum() * 4 > len(self._alive):
            keep = self._alive.nonzero().flatten()
            rows = (keep[:, None] * p + torch.arange(p, device=keep.device)).flatten()
            self.k = self.k.index_select(0, rows).index_select(1, rows)
            self.u = self.u.index_select(0, rows)
            self.items, self._alive = self.items[keep], self._alive[keep]
        return gain


class CorrectivePath(Path):
    """A path with the consumers' weights re-solved by (damped) least squares at every step.

    Args:
        problem: The layer's problem.
        ridge: Damping relative to the mean squared input, or ``"auto"``
            (:meth:`LayerProblem.ridge_of`).
    """

    def __init__(self, problem: LayerProblem, ridge: Ridge = 1e-4) -> None:
        super().__init__(problem.n_items)
        self._blocks = [_Residual(problem, b, ridge) for b in problem.blocks]

    def errors(self) -> torch.Tensor:
        gains = sum(b.gains() for b in self._blocks)
        return self._taken(self.error - gains)

    def add(self, item: int) -> None:
        for b in self._blocks:
            b.add(item)
        self.selected.append(item)

    @property
    def error(self) -> float:
        return sum(b.error for b in self._blocks)


def make_path(problem: LayerProblem, scale: str, *, ridge: Ridge = 1e-4) -> Path:
    """A fresh path on ``problem`` with the kept items' factors set by ``scale`` (one of
    :data:`SCALES`)."""
    if scale == "refit":
        return CorrectivePath(problem, ridge)
    if scale in SCALES:
        return ScaledPath(problem.form(), scale)
    raise ConfigError(f"'scale' must be one of {list(SCALES)}. Got {scale!r} instead.")


def greedy(path: Path, steps: int) -> list[float]:
    """Add the item with the lowest error ``steps`` times (ties: the lowest index); returns
    the error after each step."""
    errors = []
    for _ in range(steps):
        scores = path.errors()
        path.add(int(torch.argmin(scores)))
        errors.append(path.error)
    return errors


def scorer(fresh: Callable[[], Path]) -> Callable[[list[int], list[int]], list[float]]:
    """The greedy engine's ``score(selected, candidates)`` on a path (for
    :func:`~gfsprune.core.select.forward_select`): the path follows ``selected`` (a longer
    version of the last one adds the new items; any other starts again from ``fresh()``)."""
    state = {"path": fresh()}

    def score(selected: Sequence[int], cands: Sequence[int]) -> list[float]:
        path = state["path"]
        if path.selected != list(selected[: len(path.selected)]):
            path = state["path"] = fresh()
        for item in selected[len(path.selected) :]:
            path.add(item)
        return path.errors()[list(cands)].tolist()

    return score
