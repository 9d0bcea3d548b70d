"""Shifted products: a stride-1 convolution's statistics without unfolding its input.

A convolution's unfolded rows repeat each input value once per tap. With stride 1 the input
at one tap is the input at another moved by a fixed offset, so the Gram blocks of pairs of
taps that differ by the same offset are one product of the input with itself moved, less
what falls outside each tap's window (:func:`add_shifted`). Products in float32 over at most
:data:`CHUNK_ROWS` columns at a time, summed in float64, as
:class:`~gfsprune.scoring.reconstruction.gram.ConsumerStats` sums the unfolded rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gfsprune.scoring.reconstruction.gram import ConsumerStats

__all__ = ["CHUNK_ROWS", "Frames", "add_product", "add_shifted", "frames", "multiplies"]

#: Rows (or columns of a wide image) summed in one float32 product: relative error about
#: 3e-7 of the largest entry.
CHUNK_ROWS = 8192


def add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b.T`` for ``(C, L)`` and ``(D, L)`` views: float products over at
    most :data:`CHUNK_ROWS` columns at a time, summed in ``out``'s dtype."""
    length = a.shape[1]
    full = length // CHUNK_ROWS
    if full:
        cut = full * CHUNK_ROWS
        blocks_a = a[:, :cut].unflatten(1, (full, CHUNK_ROWS)).transpose(0, 1)
        blocks_b = b[:, :cut].unflatten(1, (full, CHUNK_ROWS)).transpose(0, 1)
        out.add_(torch.bmm(blocks_a, blocks_b.transpose(1, 2)).sum(0, dtype=out.dtype))
    if length > full * CHUNK_ROWS:
        out.add_(a[:, full * CHUNK_ROWS :] @ b[:, full * CHUNK_ROWS :].T)


@dataclass
class Frames:
    """The taps of a stride-1 convolution on a padded input laid out as one wide image
    (:func:`add_shifted`).

    Attributes:
        high, wide: The output's size.
        total: The wide image's length (flat).
        offsets: Each tap's flat offset in the wide image.
        corners: Each tap's window's top-left position in a sample.
        pairs: For each pair of taps ``(t, u)`` (``offsets[t] <= offsets[u]``): ``(t, u,
            s, rows, cols)``, ``s`` their offset's difference, ``rows`` the rows outside
            ``t``'s window and ``cols`` its columns outside it (in its rows) whose product
            with the moved image is not known to be zero (a row or column of zeros on
            either side, as zero padding gives, is left out).
    """

    high: int
    wide: int
    total: int
    offsets: list[int]
    corners: list[tuple[int, int]]
    pairs: list[tuple[int, int, int, list[int], list[int]]]


def frames(x: torch.Tensor, kernel: tuple, dilation: tuple) -> Frames:
    """The taps' frames for a stride-1 convolution on its padded input ``x``."""
    n, _, height, width = x.shape
    (kh, kw), (dh, dw) = kernel, dilation
    high, wide = height - dh * (kh - 1), width - dw * (kw - 1)
    row = n * width
    corners = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
    offsets = [top * row + left for top, left in corners]
    # rows (columns) with a nonzero input; looked at only where the kernel spans several,
    # as only then are there rows (columns) outside a tap's window
    flags = x.ne(0) if kh * kw > 1 else None
    live_rows = flags.any(3).any(1).any(0).tolist() if kh > 1 else [True] * height
    live_cols = flags.any(2).any(1).any(0).tolist() if kw > 1 else [True] * width
    pairs = []
    for t, u in itertools.combinations_with_replacement(range(len(offsets)), 2):
        if offsets[t] > offsets[u]:
            t, u = u, t
        s = offsets[u] - offsets[t]
        down = (s + row // 2) // row  # s moves down this many rows and across by the rest
        across = s - down * row
        top, left = corners[t]
        rows = [
            r
            for r in [*range(top), *range(top + high, height)]
            if live_rows[r]
            and any(live_rows[k] for k in range(r + down - 1, r + down + 2) if 0 <= k < height)
        ]
        cols = [
            col
            for col in [*range(left), *range(left + wide, width)]
            if live_cols[col] and live_cols[(col + across) % width]
        ]
        pairs.append((t, u, s, rows, cols))
    total = height * row
    return Frames(high, wide, total, offsets, corners, pairs)


def multiplies(x: torch.Tensor, frames: Frames, outputs: int) -> int:
    """The multiply-adds of :func:`add_shifted` on the padded input ``x`` (``outputs``: the
    convolution's output channels)."""
    n, c, _, width = x.shape
    taps = len(frames.offsets)
    moves = {s for _, _, s, _, _ in frames.pairs}
    rows = {(r, s) for _, _, s, rs, _ in frames.pairs for r in rs}
    cols = sum(len(cs) for *_, cs in frames.pairs)
    frame = len(rows) * n * width + cols * n * frames.high
    return c * c * (len(moves) * frames.total + frame) + taps * c * outputs * frames.total


def add_shifted(stats: ConsumerStats, x: torch.Tensor, y: torch.Tensor, frames: Frames) -> None:
    """Accumulate the rows of a stride-1 convolution without unfolding them: ``x`` its
    padded input ``(N, C, H, W)``, ``y`` its output ``(N, out, H', W')``, ``frames``
    its taps' (:func:`frames`).

    The batch is laid out as one wide image (every sample's rows side by side, channels
    first), so that the input at tap ``t'`` of an output position is the input at tap
    ``t`` moved by one flat offset ``s``. The Gram block of two taps is then the product
    of the whole image with itself moved by ``s`` (one product per distinct offset: 13
    for a 3x3 kernel where unfolded rows need 81 blocks), less the positions outside
    the taps' window (a frame of a few rows and columns, :func:`frames`); the cross
    products pair each tap's moved image with the outputs laid out alike (zero outside
    the output positions). The sums are those of :meth:`ConsumerStats.add`, in another order.
    """
    n, c, height, width = x.shape
    high, wide = frames.high, frames.wide
    kind = torch.float64 if x.dtype == torch.float64 else torch.float32
    taps, q, row, total = len(frames.offsets), c * len(frames.offsets), n * width, frames.total
    # the wide image, zeros after its end (where a moved image reads past it)
    z = x.new_zeros(c, total + max(frames.offsets), dtype=kind)
    z[:, :total].view(c, height, n, width).copy_(x.permute(1, 2, 0, 3))
    plane = x.sum(0, dtype=torch.float64)  # (C, H, W): the samples' sum, for the ones
    moved: dict[int, torch.Tensor] = {}
    rows_outside: dict[tuple[int, int], torch.Tensor] = {}

    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = a.new_zeros(a.shape[0], b.shape[0], dtype=torch.float64)
        add_product(out, a, b)
        return out

    def columns_at(top: int, col: int, s: int) -> torch.Tensor:
        """Column ``col`` of every sample over the rows ``top`` to ``top + H'``, moved by
        ``s``: ``(C, H' * N)``."""
        start = z.storage_offset() + top * row + col + s
        view = z.as_strided((c, high, n), (z.stride(0), row, width), start)
        return view.reshape(c, high * n)

    for t, u, s, rows, cols in frames.pairs:
        if s not in moved:
            moved[s] = product(z[:, :total], z[:, s : s + total])
        block = moved[s].clone()
        top = frames.corners[t][0]
        for r in rows:
            if (r, s) not in rows_outside:
                a = z[:, r * row : (r + 1) * row]
                rows_outside[r, s] = product(a, z[:, r * row + s : (r + 1) * row + s])
            block -= rows_outside[r, s]
        for col in cols:
            block -= product(columns_at(top, col, 0), columns_at(top, col, s))
        stats.gram[t:q:taps, u:q:taps] += block
        if t != u:
            stats.gram[u:q:taps, t:q:taps] += block.T
    for t, (top, left) in enumerate(frames.corners):  # each tap's window's sums
        sums = plane[:, top : top + high, left : left + wide].sum((1, 2))
        stats.gram[t:q:taps, q] += sums
        stats.gram[q, t:q:taps] += sums
    out = y.shape[1]
    targets = y.new_zeros(out, height, n, width, dtype=kind)
    targets[:, :high, :, :wide] = y.permute(1, 2, 0, 3)
    targets = targets.view(out, total)
    for t, s in enumerate(frames.offsets):
        add_product(stats.cross[t:q:taps], z[:, s : s + total], targets)
    stats.cross[q].add_(y.sum((0, 2, 3), dtype=torch.float64))
    stats.energy.add_(y.double().pow(2).sum((0, 2, 3)))
    count = n * high * wide
    stats.gram[q, q] += count
    stats.rows += count
