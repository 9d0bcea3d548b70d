"""The mini-batches greedy steps draw, one per step, resumable by count."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator

import torch

from gfsprune._inputs import move
from gfsprune.errors import DataError

__all__ = ["BatchStream"]


class BatchStream:
    """Cycles through re-iterable ``(inputs, targets)`` data forever, counting the batches
    drawn so that an interrupted run can fast-forward to the same place.

    With a ``seed``, the stream draws its batches under its own state of torch's global CPU
    generator (seeded from ``seed`` and ``name``), so what a shuffling DataLoader without a
    generator of its own, or a random augmentation, gives depends only on the stream's own
    position: not on the other streams drawn from the same data in between (the curves,
    the refit's and the tuning's), whose order differs in a resumed run (issue 28).

    Args:
        data: The mini-batches.
        device: Where :meth:`next` puts them.
        seed: Seeds the stream's generator state; ``None``: draw under the global one.
        name: Tells apart the streams of one run over the same data.
    """

    def __init__(
        self, data: Iterable, device: torch.device, *, seed: int | None = None, name: str = ""
    ) -> None:
        self._data = data
        self._device = device
        self._it = self._cycle()
        self.drawn = 0
        self._rng: torch.Tensor | None = None
        if seed is not None:
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            self._rng = (
                torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1).get_state()
            )

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
        inputs, targets = self._draw()
        self.drawn += 1
        return move(inputs, self._device), move(targets, self._device)

    def skip_to(self, drawn: int) -> None:
        """Draw (without moving to the device) until ``drawn`` batches have been drawn."""
        while self.drawn < drawn:
            self._draw()
            self.drawn += 1

    def _draw(self) -> tuple:
        if self._rng is None:
            return next(self._it)
        with torch.random.fork_rng(devices=[]):  # the caller's global state is kept
            torch.set_rng_state(self._rng)
            batch = next(self._it)
            self._rng = torch.get_rng_state()
        return batch
