"""Selection schedules: how many candidates forward selection scores, and how many it adds
per step.

The exact schedule is the paper's rule: one pick per step among ``candidates`` random
channels, each scored by a forward pass. It costs (channels kept) x (candidates) passes, so a
layer with hundreds of channels takes hundreds of steps. The fast schedule scores far fewer:

- a **first-order screen**: one backward pass gives the derivative of the loss with respect
  to every channel's mask factor at once; adding channel ``c`` changes the loss by about
  ``g_c`` times its factor (the rescale moves every kept channel's factor by the same amount,
  a term shared by all candidates), so only the ``screen`` channels with the lowest ``g_c``
  are scored exactly;
- **several picks per step**: one per step for a layer's first ``warmup`` picks (they change
  the loss most), then the best ``growth * k`` of the step's exactly scored candidates once
  ``k`` channels are kept, so a layer takes tens of steps, not hundreds: about
  ``warmup + log(kept / warmup) / log(1 + growth)``, whatever its width.

A schedule is one small class behind :class:`Schedule`; ``PruneConfig(schedule=...)`` takes a
name or an instance.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from gfsprune.errors import ConfigError

__all__ = ["SCHEDULES", "Exact", "Fast", "Schedule"]


class Schedule(ABC):
    """How forward selection steps through a layer."""

    #: The name ``PruneConfig(schedule=...)`` knows it by.
    name: ClassVar[str]

    @abstractmethod
    def picks(self, kept: int) -> int:
        """Channels added at a step that starts with ``kept`` channels."""

    @abstractmethod
    def screened(self, kept: int) -> int | None:
        """Candidates scored exactly at that step, chosen by the first-order screen;
        ``None``: no screen (a random subset of ``PruneConfig.candidates``)."""

    def rescored(self) -> int | None:
        """With several picks per step, how many of the step's next-ranked candidates are
        scored again before each pick after the first (``None``: the ranking is taken as
        it is; see :func:`~gfsprune.core.select.forward_select`)."""
        return None

    def settings(self) -> str:
        """A description that changes whenever the plan would (for resuming)."""
        return repr(self)


@dataclass(frozen=True)
class Exact(Schedule):
    """The paper's rule: one pick per step, every candidate scored by its loss."""

    name: ClassVar[str] = "exact"

    def picks(self, kept: int) -> int:
        return 1

    def screened(self, kept: int) -> int | None:
        return None


@dataclass(frozen=True)
class Fast(Schedule):
    """A first-order screen and several picks per step.

    Attributes:
        growth: Picks per step as a fraction of the channels already kept (at least one):
            0.25 adds a quarter more each step; 0 picks one per step.
        screen: Candidates scored exactly per step (at least twice the picks); ``None``
            scores a random subset of ``PruneConfig.candidates`` instead. ``Fast(growth=0,
            screen=None)`` is the exact schedule.
        warmup: One pick per step until the layer keeps this many channels (the first picks
            change the loss most).
        rescore: With several picks per step, how many next-ranked candidates each pick
            after the first scores again with the picks so far (``None``: none).
        exact_warmup: The warm-up picks follow the exact rule, a random subset of
            ``PruneConfig.candidates`` and no screen, so a layer that keeps at most
            ``warmup`` channels gets the exact plan and only wider ones are sped up.
    """

    name: ClassVar[str] = "fast"
    growth: float = 0.25
    screen: int | None = 16
    warmup: int = 16
    rescore: int | None = None
    exact_warmup: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.growth, bool)
            or not isinstance(self.growth, int | float)
            or not (math.isfinite(self.growth) and self.growth >= 0)
        ):
            raise ConfigError(
                f"The 'growth' parameter of Fast must be a non-negative number. Got "
                f"{self.growth!r} instead."
            )
        if not isinstance(self.exact_warmup, bool):
            raise ConfigError(
                f"The 'exact_warmup' parameter of Fast must be True or False. Got "
                f"{self.exact_warmup!r} instead."
            )
        for option, least, optional in (
            ("screen", 1, True),
            ("warmup", 0, False),
            ("rescore", 1, True),
        ):
            value = getattr(self, option)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                kind = "a positive integer" if least else "a non-negative integer"
                raise ConfigError(
                    f"The '{option}' parameter of Fast must be {kind}"
                    f"{' or None' if optional else ''}. Got {value!r} instead."
                )

    def rescored(self) -> int | None:
        return self.rescore

    def picks(self, kept: int) -> int:
        return 1 if kept < self.warmup else max(1, int(kept * self.growth))

    def screened(self, kept: int) -> int | None:
        if self.screen is None or (self.exact_warmup and kept < self.warmup):
            return None
        return max(self.screen, 2 * self.picks(kept))


#: The schedules ``PruneConfig(schedule=NAME)`` accepts.
SCHEDULES: Mapping[str, type[Schedule]] = {s.name: s for s in (Exact, Fast)}
