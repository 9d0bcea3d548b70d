"""The whole run's estimate of the time left."""

from __future__ import annotations

import pytest

from gfsprune.core import eta
from gfsprune.core.eta import RunClock


def test_the_time_left_is_extrapolated_from_the_work_done_since_this_process_began(
    monkeypatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(eta.time, "monotonic", lambda: now[0])
    clock = RunClock([1, 1, 2, 4])
    assert clock.left(1) == ""  # a resumed run starts at its second item: nothing done yet
    now[0] += 10.0  # one unit of work took 10 s
    assert clock.left(2) == " (run ~1m00s left)"  # 6 units left
    now[0] += 20.0
    assert clock.left(3) == " (run ~40s left)"


@pytest.mark.parametrize(("seconds", "text"), [(44.6, "45s"), (200, "3m20s"), (3725, "1h02m")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert eta._duration(seconds) == text
