"""The cost-model protocol: what a budget counts, predicted for given per-layer widths.

A cost model is one small class behind :class:`CostModel`. It predicts named metrics
(``{"macs": ..., "params": ...}`` for :class:`~gfsprune.core.compute_cost.ComputeCost`, the
default) of the model pruned to given per-channel keep shares, fast enough for an allocator
that asks thousands of times, and measures the same metrics on a real model for the result.
A budget (:class:`~gfsprune.targets.Budget`) names the metric it constrains and may name the
cost model that predicts it (:meth:`~gfsprune.targets.Target.cost_model`).

A cost model whose predictions are estimates (a latency, timed on the device) may also
:meth:`~CostModel.calibrate` them: measure the model pruned to planned widths and correct its
later predictions with that measurement; the width planner closes that loop on a budget.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.surgery import ChannelLayer

__all__ = ["CostFactory", "CostModel"]


class CostModel(ABC):
    """Predicts named metrics of a model pruned to given per-channel keep shares.

    A keep vector per layer holds, for each channel, 1 (kept), 0 (removed) or, for a layer
    not yet selected, its planned width divided by its full width. Subclasses call
    ``super().__init__(layers)`` and implement :meth:`predict_flat` and :meth:`measure`.

    Attributes:
        widths: The layers' full widths, in selection order.
        sizes: Channels per selection item of each layer (widths are multiples of it).
        revision: Counts the corrections :meth:`calibrate` made (what was computed from
            predictions of an older revision may be stale).
    """

    def __init__(self, layers: Sequence[ChannelLayer]) -> None:
        self.widths = np.array([layer.width for layer in layers], dtype=float)
        self.sizes = np.array([layer.item_size for layer in layers], dtype=float)
        self.revision = 0

    @abstractmethod
    def predict_flat(self, flat: np.ndarray) -> dict[str, float]:
        """Every metric for the keep vectors of all layers concatenated, in layer order."""

    @abstractmethod
    def measure(self, model: nn.Module, example_inputs: object) -> dict[str, float]:
        """Every metric of a real model (the unpruned one, or the physically pruned one)."""

    def predict(self, keep: Sequence[np.ndarray]) -> dict[str, float]:
        """Every metric for per-layer keep vectors."""
        return self.predict_flat(np.concatenate([np.asarray(k, dtype=float) for k in keep]))

    @functools.cached_property
    def full(self) -> dict[str, float]:
        """Every metric of the unpruned model, as predicted."""
        return self.predict([np.ones(int(w)) for w in self.widths])

    def ratio(self, keep: Sequence[np.ndarray] | np.ndarray, metric: str) -> float:
        """``metric`` for the keep vectors (per layer, or concatenated as :meth:`predict_flat`
        takes them) as a fraction of the unpruned model's."""
        if metric not in self.full:
            raise ConfigError(
                f"The budget counts {metric!r}, which the {type(self).__name__} cost model "
                f"does not predict (it predicts {sorted(self.full)}); give the budget a cost "
                "model that does (Target.cost_model)."
            )
        cost = self.predict_flat(keep) if isinstance(keep, np.ndarray) else self.predict(keep)
        return cost[metric] / self.full[metric]

    def neighbours(self) -> list[set[int]]:
        """For each layer, the layers whose widths change what narrowing it saves (an
        allocator re-prices only those after a step). Default: every other layer."""
        everyone = set(range(len(self.widths)))
        return [everyone - {i} for i in range(len(self.widths))]

    def calibrate(self, widths: Sequence[int]) -> dict[str, float]:
        """Measure the model pruned to ``widths`` (channels per layer, in layer order) and
        correct later predictions so that they agree with the measurement, where the
        predictions are estimates. Returns the measured metrics as fractions of the unpruned
        model's; empty (the default) where predictions are exact and nothing is measured."""
        return {}

    def fixed(self, metric: str) -> Mapping[str, float]:
        """The part of ``metric`` no pruned layer changes, by the module that spends it, the
        largest first (named when a budget is refused); empty where the model does not know."""
        return {}


#: Builds a run's cost model: ``factory(model, example_inputs, layers)`` (the model traced,
#: its channel layers in selection order). A :class:`CostModel` subclass is one.
CostFactory = Callable[[nn.Module, object, Sequence[ChannelLayer]], CostModel]
