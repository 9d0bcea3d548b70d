"""Gram statistics: what one streamed pass over calibration batches says about the consumers
of a channel layer, enough to reconstruct their outputs from any subset of their inputs.

A consumer (a convolution or linear layer reading a layer's channels) computes ``Y = X W'``:
``X`` has one row per output position (sample x spatial position, or token) and one column
per *input position* (an input channel at one kernel tap; a linear layer's input feature),
in ``F.unfold``'s order (channel-major), and a column of ones last: the bias's, or where
the module has none a per-output intercept's (which a refit may fit into the BatchNorm that
follows, :mod:`~gfsprune.scoring.reconstruction.problem`); ``W`` is its weight as ``(out,
Q)`` (:func:`weight_matrix`; zeros across the groups of a grouped convolution). Per
consumer, accumulated batch by batch in float64:

    gram = X'X  (Q, Q)     cross = X'Y*  (Q, out)     energy = sum of Y*^2 per output  (out,)

with ``X`` the inputs the *network pruned so far* gives the consumer (its masks applied) and
``Y*`` the *unpruned* network's outputs of the same consumer on the same batch. They are sums
over rows, so the statistics of several chunks or processes add up to one pass's
(:meth:`ConsumerStats.__add__`, :meth:`ConsumerStats.all_reduce`). The squared error of the
consumer with its inputs scaled, or its weights re-solved, is a quadratic in them
(:mod:`gfsprune.scoring.reconstruction`); memory is ``Q x Q`` whatever the number of batches.
A stride-1 convolution's sums come from shifted products of its input where they multiply
less than its unfolded rows (:mod:`~gfsprune.scoring.reconstruction.shifted`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gfsprune import distributed
from gfsprune.scoring.reconstruction import shifted
from gfsprune.scoring.reconstruction.passes import Passes, call_counts
from gfsprune.scoring.reconstruction.shifted import CHUNK_ROWS

__all__ = [
    "MAX_CROSS_VALIDATED",
    "MAX_POSITIONS",
    "ConsumerStats",
    "WELL_POSED",
    "UndescribedConsumer",
    "collect_stats",
    "input_padding",
    "input_positions",
    "positions",
    "unsupported",
    "weight_matrix",
]

#: The most input positions (``Q``) a consumer may have: its ``Q x Q`` float64 Gram matrix
#: takes 512 MiB at 8192.
MAX_POSITIONS = 8192
#: Rows per unknown from which a consumer's least squares is taken as well posed: below it
#: (fewer rows than ``WELL_POSED * Q``, and ``Q`` at most :data:`MAX_CROSS_VALIDATED`) its
#: statistics keep a fold for cross-validation.
WELL_POSED = 10
#: The most input positions a consumer's least squares is cross-validated at (its cost grows
#: as ``Q**3``: about 3 s for 2,048 positions on one CPU core, 30 s for 4,096).
MAX_CROSS_VALIDATED = 4096
# Elements of X multiplied at once: bounds the memory of one batch's product
# (2**24 doubles: 128 MiB).
_CHUNK_ELEMENTS = 1 << 24
# Columns per block of a Gram product: only the blocks on and above the diagonal are
# multiplied (the matrix is symmetric).
_GRAM_BLOCK = 512


class UndescribedConsumer(ValueError):
    """A consumer whose outputs its weights and inputs do not reproduce as a linear map (e.g.
    a subclass that transforms its weights or inputs in its own way)."""


def unsupported(module: nn.Module) -> str | None:
    """Why the statistics cannot describe ``module`` as a consumer (``None``: they may; a
    subclass is checked on its first batch, :func:`input_padding`)."""
    if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        return f"a {type(module).__name__} (only Linear, Conv1d and Conv2d consumers are described)"
    if input_positions(module) > MAX_POSITIONS:
        return f"{input_positions(module)} input positions (at most {MAX_POSITIONS})"
    return None


def taps(module: nn.Module) -> int:
    """Input positions per input channel: the kernel's size (1 for a linear layer)."""
    if isinstance(module, nn.Linear):
        return 1
    return int(torch.tensor(module.kernel_size).prod())


def input_positions(module: nn.Module) -> int:
    """``Q``: the columns of ``X``, the column of ones included."""
    inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
    return inputs * taps(module) + 1


def weight_matrix(module: nn.Module, intercept: torch.Tensor | None = None) -> torch.Tensor:
    """The module's weights as ``(out, Q)`` in float64: an input channel's taps in ``unfold``
    order, zeros where a grouped convolution's output does not read the input, and last the
    bias, or where there is none ``intercept`` (``(out,)``; default zeros)."""
    weight = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        dense = weight
    else:
        out, per_group = weight.shape[:2]
        k = taps(module)
        groups = module.groups
        dense = weight.new_zeros(out, groups, per_group * k)
        flat = weight.reshape(groups, out // groups, per_group * k)
        for g in range(groups):
            dense[g * (out // groups) : (g + 1) * (out // groups), g] = flat[g]
        dense = dense.reshape(out, groups * per_group * k)
    if module.bias is not None:
        intercept = module.bias.detach()
    elif intercept is None:
        intercept = dense.new_zeros(dense.shape[0])
    return torch.cat([dense, intercept.to(dense)[:, None]], 1)


def columns(
    module: nn.Module,
    x: torch.Tensor,
    pad: Sequence[int] | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The module's input ``x`` as the rows of ``X`` without its last (constant) column, laid
    out as the columns of ``(B, Q - 1, L)`` blocks: a convolution's unfolded samples, or one
    transposed view of a linear layer's rows. ``pad`` (``F.pad``'s order) replaces a
    convolution's own padding (see :func:`input_padding`); ``rows`` (indices into the ``M``
    rows, sample-major) keeps only those, gathered without unfolding the others."""
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        return (flat if rows is None else flat[rows]).T[None]
    return _unfolded(*_padded(module, x, pad), rows)


def _unfolded(x: torch.Tensor, kernel, dilation, stride, rows: torch.Tensor | None):
    """:func:`columns` of a convolution's padded input ``x`` (:func:`_padded`)."""
    if rows is None:
        return F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C * taps, L)
    return _gathered(x, rows, kernel, dilation, stride).T[None]


def _padded(module: nn.Module, x: torch.Tensor, pad: Sequence[int] | None) -> tuple:
    """A convolution's input padded as it pads it (or by ``pad``), as ``(N, C, H, W)`` (a
    Conv1d's as ``(N, C, 1, L)``), and its kernel, dilation and stride as pairs."""
    one_d = isinstance(module, nn.Conv1d)
    if one_d:  # (N, C, L) as (N, C, 1, L)
        x = x.unsqueeze(2)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    if pad is None:
        pad = module._reversed_padding_repeated_twice
    if one_d:
        pad = [*pad, 0, 0]
    x = F.pad(x, pad, mode=mode) if any(pad) else x
    pair = (lambda v: (1, v[0])) if one_d else (lambda v: tuple(v))
    return x, pair(module.kernel_size), pair(module.dilation), pair(module.stride)


def _stacked(blocks: torch.Tensor) -> torch.Tensor:
    """The columns of ``(B, K, L)`` blocks as ``(B * L, K)`` rows."""
    return blocks.transpose(1, 2).reshape(-1, blocks.shape[1])


def positions(
    module: nn.Module,
    x: torch.Tensor,
    pad: Sequence[int] | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rows of ``X``: ``(M, Q)``, in ``x``'s dtype, the last column ones (the bias's or
    intercept's); as :func:`columns` otherwise."""
    flat = _stacked(columns(module, x, pad, rows))
    return torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)


def _gathered(x: torch.Tensor, rows: torch.Tensor, kernel, dilation, stride) -> torch.Tensor:
    """``F.unfold``'s rows ``rows`` of the padded ``(N, C, H, W)`` input ``x``: ``(P, C *
    taps)``, channel-major as ``unfold`` orders them."""
    wide = [(x.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
    sample, at = rows // (wide[0] * wide[1]), rows % (wide[0] * wide[1])
    ki, kj = torch.meshgrid(
        torch.arange(kernel[0], device=x.device),
        torch.arange(kernel[1], device=x.device),
        indexing="ij",
    )
    h = (at // wide[1] * stride[0])[:, None] + (ki.flatten() * dilation[0])[None]  # (P, taps)
    w = (at % wide[1] * stride[1])[:, None] + (kj.flatten() * dilation[1])[None]
    taps = x.permute(0, 2, 3, 1)[sample[:, None], h, w]  # (P, taps, C)
    return taps.transpose(1, 2).reshape(rows.numel(), -1)


def output_columns(
    module: nn.Module, y: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The module's output ``y`` as the columns of ``(B, out, L)`` blocks, matching
    :func:`columns` (only ``rows`` where given)."""
    if isinstance(module, nn.Linear):
        flat = y.reshape(-1, y.shape[-1])
        return (flat if rows is None else flat[rows]).T[None]
    y = y.flatten(2)  # (N, out, L)
    if rows is None:
        return y
    return y[rows // y.shape[2], :, rows % y.shape[2]].T[None]


def outputs(module: nn.Module, y: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The module's output ``y`` as ``(M, out)`` rows, matching :func:`positions` (only
    ``rows`` where given)."""
    return _stacked(output_columns(module, y, rows))


def _row_count(module: nn.Module, y: torch.Tensor) -> int:
    """``M``: the rows of ``X`` (and of the outputs) that the output ``y`` stands for."""
    if isinstance(module, nn.Linear):
        return y.numel() // y.shape[-1]
    return y.numel() // y.shape[1]


def _same_padding(module: nn.Module, x: torch.Tensor) -> list[int]:
    """TensorFlow's "SAME" padding of ``x`` for ``module`` (more at the end where odd), in
    ``F.pad``'s order, the module's own padding added."""
    pad = []
    sizes = x.shape[2:]
    for i in reversed(range(len(sizes))):
        k, s, d = module.kernel_size[i], module.stride[i], module.dilation[i]
        total = max((-(-sizes[i] // s) - 1) * s + (k - 1) * d + 1 - sizes[i], 0)
        own = module.padding[i] if isinstance(module.padding, tuple) else 0
        pad += [total // 2 + own, total - total // 2 + own]
    return pad


def input_padding(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[int] | None:
    """The padding under which the rows of ``x`` times the weight matrix reproduce the
    module's output ``y`` (checked on the first sample's first rows): ``None`` for its own;
    for a subclass of a convolution that pads in its own way, TensorFlow's "SAME" padding
    (as EfficientNet's and timm's ``Conv2dSame``).

    Raises:
        UndescribedConsumer: No padding reproduces ``y``.
    """
    x, y = x[:1], y[:1]  # the first sample's rows are enough to tell
    weight = weight_matrix(module)
    target = outputs(module, y)
    exact = type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d)
    tries: list[list[int] | None] = [None]
    if not exact and isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        tries.append(_same_padding(module, x))
    for pad in tries:
        rows = positions(module, x, pad)
        if rows.shape[0] != target.shape[0]:
            continue
        got, want = rows[:64].double() @ weight.T, target[:64].double()
        if float((got - want).abs().max()) <= 1e-3 * float(want.abs().max()) + 1e-6:
            return pad
    raise UndescribedConsumer(
        f"a {type(module).__name__} whose outputs are not its weights times its padded inputs"
    )


@dataclass
class ConsumerStats:
    """One consumer's statistics over some rows (see the module's docstring).

    Attributes:
        gram: ``X'X``, ``(Q, Q)`` float64.
        cross: ``X'Y*``, ``(Q, out)`` float64.
        energy: ``sum of Y*^2`` per output, ``(out,)`` float64.
        rows: The number of rows.
        fold: The same statistics over a part of the rows (the even-numbered calibration
            batches), for cross-validation; ``None`` where none was kept
            (:func:`collect_stats`).
    """

    gram: torch.Tensor
    cross: torch.Tensor
    energy: torch.Tensor
    rows: int
    fold: ConsumerStats | None = None

    @classmethod
    def zeros(cls, module: nn.Module, device: torch.device) -> ConsumerStats:
        """Statistics over no rows for ``module``."""
        q, out = input_positions(module), module.weight.shape[0]
        kind = {"dtype": torch.float64, "device": device}
        return cls(
            torch.zeros(q, q, **kind), torch.zeros(q, out, **kind), torch.zeros(out, **kind), 0
        )

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate the rows of ``X`` without its last column (ones), given as the columns
        of ``(B, Q - 1, L)`` blocks (:func:`columns`), and the rows of ``Y*`` as the
        columns of ``(B, out, L)`` blocks (:func:`output_columns`)."""
        # products in float32 (2-3x faster than float64 on a CPU; relative error ~3e-7 over
        # at most CHUNK_ROWS rows), summed in float64; float64 data stays float64. Each
        # product reads a block's columns in place; short blocks are stacked first, so that
        # a product sums many rows.
        kind = torch.float64 if x.dtype == torch.float64 else torch.float32
        q, total = x.shape[1], x.shape[0] * x.shape[2]
        if x.shape[0] > 1 and x.shape[2] < CHUNK_ROWS // 8:
            x, y = _stacked(x).T[None], _stacked(y).T[None]
        step = max(1, min(CHUNK_ROWS, _CHUNK_ELEMENTS // (q + 1)))
        for xs, ys in zip(x, y, strict=True):
            for start in range(0, xs.shape[1], step):
                a, b = xs[:, start : start + step].to(kind), ys[:, start : start + step].to(kind)
                sums = a.sum(1, dtype=torch.float64)
                _add_gram(self.gram[:q, :q], a)
                self.gram[:q, q].add_(sums)
                self.gram[q, :q].add_(sums)
                self.cross[:q].add_(a @ b.T)
                self.cross[q].add_(b.sum(1, dtype=torch.float64))
                self.energy.add_(b.double().pow(2).sum(1))
        self.gram[q, q] += total
        self.rows += total

    def __add__(self, other: ConsumerStats) -> ConsumerStats:
        fold = None
        if self.fold is not None and other.fold is not None:
            fold = self.fold + other.fold
        return ConsumerStats(
            self.gram + other.gram,
            self.cross + other.cross,
            self.energy + other.energy,
            self.rows + other.rows,
            fold,
        )

    def __iadd__(self, other: ConsumerStats) -> ConsumerStats:
        """Add ``other``'s sums in place (the folds are left as they are)."""
        self.gram.add_(other.gram)
        self.cross.add_(other.cross)
        self.energy.add_(other.energy)
        self.rows += other.rows
        return self

    def rest(self) -> ConsumerStats:
        """The statistics of the rows outside :attr:`fold` (which must be set)."""
        f = self.fold
        assert f is not None, "statistics without a fold"
        return ConsumerStats(
            self.gram - f.gram, self.cross - f.cross, self.energy - f.energy, self.rows - f.rows
        )

    def all_reduce(self) -> None:
        """Sum the statistics of every process in place (nothing in a single process)."""
        if not distributed.is_distributed():
            return
        for tensor in (self.gram, self.cross, self.energy):
            dist.all_reduce(tensor)
        rows = torch.tensor([float(self.rows)], dtype=torch.float64, device=self.gram.device)
        dist.all_reduce(rows)
        self.rows = int(rows.item())
        if self.fold is not None:
            self.fold.all_reduce()


def _shifted_is_cheaper(module: nn.Module, x: torch.Tensor, frames: shifted.Frames) -> bool:
    """Whether :func:`~gfsprune.scoring.reconstruction.shifted.add_shifted` multiplies less
    than :meth:`ConsumerStats.add` for a stride-1 convolution ``module`` on its padded input
    ``x``."""
    n, c = x.shape[:2]
    out = module.weight.shape[0]
    q, positions = c * len(frames.offsets), n * frames.high * frames.wide
    cuts = -(-q // _GRAM_BLOCK)
    upper = min(q * q, (cuts * (cuts + 1) // 2) * _GRAM_BLOCK**2)
    unfolded = upper * positions + q * out * positions
    return shifted.multiplies(x, frames, out) < unfolded


def _add_gram(gram: torch.Tensor, a: torch.Tensor) -> None:
    """``gram += a @ a.T``, multiplying only the blocks on and above the diagonal."""
    q = a.shape[0]
    cuts = list(range(0, q, _GRAM_BLOCK)) + [q]
    for i, j in itertools.combinations_with_replacement(range(len(cuts) - 1), 2):
        rows, cols = slice(cuts[i], cuts[i + 1]), slice(cuts[j], cuts[j + 1])
        block = a[rows] @ a[cols].T
        gram[rows, cols].add_(block)
        if i != j:
            gram[cols, rows].add_(block.T)


def _sampled(
    count: int, rows: int | None, draw: torch.Generator, device: torch.device
) -> torch.Tensor | None:
    """``rows`` of ``count`` row indices at random, in order (``None``: all of them)."""
    if rows is None or count <= rows:
        return None
    return torch.randperm(count, generator=draw)[:rows].sort().values.to(device)


def _accumulate(
    stats: ConsumerStats,
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pad: Sequence[int] | None,
    keep: torch.Tensor | None,
) -> None:
    """Add one call's rows (``keep`` of them, or all) to ``stats``: a stride-1
    convolution's all rows by shifted products where they multiply less, else unfolded."""
    if not isinstance(module, nn.Conv1d | nn.Conv2d):
        stats.add(columns(module, x, pad, keep), output_columns(module, y, keep))
        return
    padded, kernel, dilation, stride = conv = _padded(module, x, pad)  # padded once
    if keep is None and stride == (1, 1):
        frames = shifted.frames(padded, kernel, dilation)
        if _shifted_is_cheaper(module, padded, frames):
            if isinstance(module, nn.Conv1d):
                y = y.unsqueeze(2)
            shifted.add_shifted(stats, padded, y, frames)
            return
    stats.add(_unfolded(*conv, keep), output_columns(module, y, keep))


def collect_stats(
    work: nn.Module | Passes,
    unpruned: nn.Module | Passes,
    names: Iterable[str],
    batches: Sequence[tuple],
    *,
    folds: bool = False,
    rows: int | None = None,
) -> dict[str, ConsumerStats]:
    """The statistics of the consumers ``names`` over ``batches`` (``(inputs, targets)``):
    their inputs in ``work`` (the masked network pruned so far), their targets in
    ``unpruned`` (which may be ``work`` itself: then one pass per batch). Either may be
    :class:`~gfsprune.scoring.reconstruction.passes.Passes` over the network, which resume
    from what they kept of an earlier call's passes.

    A module called several times per forward pass (shared weights) contributes every call,
    paired in order with the unpruned network's calls. Each pass stops once every consumer
    has been called (as often as in a pass on two samples). Under ``torch.distributed`` each
    process takes every ``world_size``-th batch and the sums are all-reduced, so every
    process holds the statistics of all ``batches``. With ``folds``, where there are two
    batches or more, fewer rows than :data:`WELL_POSED` per input position and at most
    :data:`MAX_CROSS_VALIDATED` positions, each consumer's :attr:`~ConsumerStats.fold` holds
    the even-numbered batches' statistics. With ``rows``, a call whose output stands for more
    rows keeps that many, drawn at random (seeded by the batch's index: every pass and every
    process draws the same for a consumer) and taken alike from both networks.
    """
    names = sorted(set(names))
    mine_passes = work if isinstance(work, Passes) else Passes(work)
    their_passes = unpruned if isinstance(unpruned, Passes) else Passes(unpruned)
    same = their_passes.model is mine_passes.model
    modules = {n: mine_passes.model.get_submodule(n) for n in names}
    device = next(iter(modules.values())).weight.device
    # the even-numbered and the odd-numbered batches' statistics, summed at the end; one
    # accumulator for both where no fold can be kept (its memory is Q x Q)
    split = folds and len(batches) > 1
    even = {n: ConsumerStats.zeros(modules[n], device) for n in names}
    odd = {
        n: ConsumerStats.zeros(modules[n], device)
        if split and input_positions(modules[n]) <= MAX_CROSS_VALIDATED
        else even[n]
        for n in names
    }
    counts = call_counts(mine_passes.model, names, batches[0][0])
    pads: dict[str, list[int] | None] = {}
    rank, world = distributed.rank(), distributed.world_size()
    mine_prefix = mine_passes.prefix(names, batches[0][0])
    their_prefix = None if same else their_passes.prefix(names, batches[0][0])
    for index in range(rank, len(batches), world):
        inputs, stats = batches[index][0], (even, odd)[index % 2]
        mine = mine_passes.calls(mine_prefix, index, inputs, names, counts)
        if same:
            theirs = mine
        else:
            theirs = their_passes.calls(their_prefix, index, inputs, names, counts)
        for n in names:
            if len(mine[n]) != len(theirs[n]):
                raise RuntimeError(
                    f"'{n}' was called {len(mine[n])} times in the pruned network and "
                    f"{len(theirs[n])} in the unpruned one on the same batch"
                )
            if n not in pads:
                pads[n] = input_padding(modules[n], *mine[n][0])
            draw = torch.Generator().manual_seed(index)  # a consumer's draw: its batch's alone
            for (x, _), (_, y) in zip(mine[n], theirs[n], strict=True):
                module = modules[n]
                keep = _sampled(_row_count(module, y), rows, draw, y.device)
                _accumulate(stats[n], module, x, y, pads[n], keep)
    for n in names:
        even[n].all_reduce()
        if odd[n] is even[n]:
            continue
        odd[n].all_reduce()
        odd[n] += even[n]  # in place: the whole's memory is the odd half's
        few = odd[n].rows < WELL_POSED * odd[n].gram.shape[0]
        odd[n].fold = even[n] if few else None
    return odd
