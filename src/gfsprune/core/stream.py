"""The mini-batches greedy steps draw, one per step, resumable by count."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from gfsprune._inputs import move
from gfsprune.errors import DataError

__all__ = ["BatchStream"]


class BatchStream:
    """Cycles through re-iterable ``(inputs, targets)`` data forever, counting the batches
    drawn so that an interrupted run can fast-forward to the same place."""

    def __init__(self, data: Iterable, device: torch.device) -> None:
        self._data = data
        self._device = device
        self._it = self._cycle()
        self.drawn = 0

    def _cycle(self) -> Iterator[tuple]:
        for epoch in itertools.count():
            empty = True
            for batch in self._data:
                empty = False
                if not isinstance(batch, tuple | list) or len(batch) != 2:
                    size = f" of length {len(batch)}" if isinstance(batch, tuple | list) else ""
                    raise DataError(
                        "'data' must yield (inputs, targets) mini-batches; got a "
                        f"{type(batch).__name__}{size}. Wrap your dataset in a DataLoader "
                        "of (inputs, targets) pairs."
                    )
                yield batch
            if empty:
                where = (
                    " after its first pass; it must be re-iterable (a DataLoader or a list), "
                    "not a generator"
                    if epoch
                    else "; it is empty"
                )
                raise DataError(f"'data' yielded no mini-batch{where}.")

    def next(self) -> tuple[object, torch.Tensor]:
        """The next mini-batch, on the device."""
        inputs, targets = next(self._it)
        self.drawn += 1
        return move(inputs, self._device), move(targets, self._device)

    def skip_to(self, drawn: int) -> None:
        """Draw (without moving to the device) until ``drawn`` batches have been drawn."""
        while self.drawn < drawn:
            next(self._it)
            self.drawn += 1
