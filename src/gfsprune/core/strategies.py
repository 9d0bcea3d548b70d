"""Choosing the channels of one layer by loss: greedy forward selection or backward elimination.

Each greedy step draws the next mini-batch from a shared :class:`BatchStream` and scores its
candidate channel sets with an evaluator (see :mod:`gfsprune.scoring`); the layer's masks are
left at the chosen channels so that the next layer is selected on top of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gfsprune.core.select import backward_eliminate, forward_select
from gfsprune.core.stream import BatchStream
from gfsprune.surgery import ChannelLayer, Masks

__all__ = ["LayerChoice", "select_layer"]

#: ``evaluate(inputs, targets, layer, keep)`` -> one loss per row of ``keep`` (K, width).
Evaluate = Callable[[object, torch.Tensor, ChannelLayer, torch.Tensor], list[float]]


@dataclass(frozen=True)
class LayerChoice:
    """The channels kept in one layer, in the order picked, and the loss after each pick."""

    kept: list[int]
    scale: float
    losses: list[float]
    reference: float | None


def select_layer(
    layer: ChannelLayer,
    *,
    width: int | None,
    tolerance: float | None,
    strategy: str,
    stream: BatchStream,
    evaluate: Evaluate,
    masks: Masks,
    held_out: Sequence[tuple],
    candidates: int | None,
    rescale: bool,
    seed: int,
    bar: tqdm,
) -> LayerChoice:
    """Choose the channels of ``layer`` and leave its masks at the choice.

    Args:
        layer: The channel layer.
        width: How many channels to keep, or ``None`` with a tolerance.
        tolerance: Relative loss increase allowed on ``held_out`` (forward selection only).
        strategy: ``"forward"`` (greedy forward selection) or ``"backward"`` (greedy
            backward elimination by loss).
        stream: Each greedy step draws its mini-batch from here.
        evaluate: Scores channel sets on a mini-batch.
        masks: The network's channel masks.
        held_out: Fixed batches for the tolerance rule.
        candidates: Channels scored per step (a seeded random subset), ``None`` for all.
        rescale: Multiply the kept channels by ``width / kept``.
        seed: Seeds the candidate sampling.
        bar: Progress bar, updated after every pick.
    """
    size = layer.width

    def factors(sets: Sequence[Sequence[int]]) -> torch.Tensor:
        keep = torch.zeros(len(sets), size)  # (K, width): one channel set per row
        for row, channels in enumerate(sets):
            keep[row, list(channels)] = size / len(channels) if rescale else 1.0
        return keep

    def add_score(selected: list[int], cands: list[int]) -> list[float]:
        inputs, targets = stream.next()
        return evaluate(inputs, targets, layer, factors([[*selected, c] for c in cands]))

    def remove_score(remaining: list[int], cands: list[int]) -> list[float]:
        inputs, targets = stream.next()
        sets = [[i for i in remaining if i != c] for c in cands]
        return evaluate(inputs, targets, layer, factors(sets))

    def held_out_loss(channels: Sequence[int]) -> float:
        keep = factors([channels])
        return sum(evaluate(x, y, layer, keep)[0] for x, y in held_out) / len(held_out)

    def on_pick(step: int, item: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    reference = None
    try:
        if strategy == "backward" and width == size:
            kept, losses = list(range(size)), []
        elif strategy == "backward":
            selection = backward_eliminate(
                remove_score,
                size,
                steps=size - width,
                candidates=candidates,
                seed=seed,
                callback=on_pick,
            )
            kept = sorted(set(range(size)) - set(selection.order))
            losses = list(selection.losses)
        else:
            if tolerance is not None:
                reference = held_out_loss(range(size))
            selection = forward_select(
                add_score,
                size,
                steps=width,
                tolerance=None if tolerance is None else tolerance * abs(reference),
                reference=reference,
                candidates=candidates,
                seed=seed,
                monitor=held_out_loss if tolerance is not None else None,
                callback=on_pick,
            )
            kept, losses = list(selection.order), list(selection.losses)
    finally:
        bar.close()
    for segment in layer.segments:
        if not set(segment) & set(kept):
            # A concatenated part left empty would leave its module with no output channel:
            # add that part's best channel (one more greedy step, restricted to the part).
            inputs, targets = stream.next()
            scores = evaluate(inputs, targets, layer, factors([[*kept, c] for c in segment]))
            kept.append(segment[min(range(len(segment)), key=scores.__getitem__)])
    scale = size / len(kept) if rescale else 1.0
    masks.set(layer, kept, scale)
    return LayerChoice(kept, scale, losses, reference)
