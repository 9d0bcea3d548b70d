"""The whole run's estimate of the time left, shown in each layer's progress bar."""

from __future__ import annotations

import time
from collections.abc import Sequence

__all__ = ["RunClock"]


class RunClock:
    """Time left in a run of passes over layers, extrapolated from the work done so far.

    Args:
        work: The work of each (pass, layer) in run order, in any unit proportional to its
            time (items times candidates scored per step).

    Example:
        >>> clock = RunClock([1.0, 1.0])
        >>> clock.left(0)  # nothing done yet: no estimate
        ''
    """

    def __init__(self, work: Sequence[float]) -> None:
        self._work = list(work)
        self._first: int | None = None  # where this process started (a resume skips some)
        self._start = 0.0

    def left(self, position: int) -> str:
        """``" (run ~3m20s left)"`` as the item of work at ``position`` starts; ``""`` before
        any work is done."""
        now = time.monotonic()
        if self._first is None:
            self._first, self._start = position, now
        done = sum(self._work[self._first : position])
        if done <= 0:
            return ""
        seconds = (now - self._start) / done * sum(self._work[position:])
        return f" (run ~{_duration(seconds)} left)"


def _duration(seconds: float) -> str:
    """``seconds`` as ``45s``, ``3m20s`` or ``1h02m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
