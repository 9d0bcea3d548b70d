"""What to prune to: a MACs or parameter budget, or the paper's per-layer loss tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gfsprune.errors import ConfigError

__all__ = ["Macs", "Params", "Tolerance", "Widths", "Target"]


def _check_ratio(owner: str, ratio: object) -> None:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not math.isfinite(ratio)
        or not 0 < ratio < 1
    ):
        raise ConfigError(
            f"The 'ratio' parameter of {owner} must be a float in the open interval (0, 1) "
            f"(the fraction of the original to keep). Got {ratio!r} instead."
        )


@dataclass(frozen=True)
class Macs:
    """Keep ``ratio`` of the original multiply-accumulates, e.g. ``Macs(0.5)``."""

    ratio: float

    def __post_init__(self) -> None:
        _check_ratio("Macs", self.ratio)


@dataclass(frozen=True)
class Params:
    """Keep ``ratio`` of the original parameter count, e.g. ``Params(0.25)``."""

    ratio: float

    def __post_init__(self) -> None:
        _check_ratio("Params", self.ratio)


@dataclass(frozen=True)
class Tolerance:
    """The paper's rule: per layer, add channels until the loss is within ``eps`` (relative)
    of the layer's starting loss, e.g. ``Tolerance(0.02)``."""

    eps: float

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
            raise ConfigError(
                "The 'eps' parameter of Tolerance must be a non-negative float (a relative "
                f"loss increase, e.g. 0.02). Got {eps!r} instead."
            )


@dataclass(frozen=True)
class Widths:
    """Keep exactly ``widths[name]`` channels of each named channel layer (named by its root
    module, as in ``PruneResult.plan``); layers not named stay at full width. Reuses an
    architecture, e.g. to compare channel choices at the widths greedy selection chose."""

    widths: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {
            k: v
            for k, v in dict(self.widths).items()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v <= 0
        }
        if bad or not self.widths:
            raise ConfigError(
                "The 'widths' parameter of Widths must map layer names to positive integers "
                f"and name at least one layer. Got {bad or dict(self.widths)!r} instead."
            )


Target = Macs | Params | Tolerance | Widths
