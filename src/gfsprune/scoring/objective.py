"""The objective protocol: what one layer's selection minimises.

An objective is one small class behind :class:`Objective`, in three parts, each with its own
life time:

- :class:`Objective`, the options (``PruneConfig(objective=...)`` holds it; it serves many
  runs);
- :class:`BoundObjective`, bound to one run by :meth:`Objective.bind` (the working model, its
  masks, the data): what it keeps between layers, and what it does after a layer's choice
  (:meth:`BoundObjective.after`, e.g. re-solve the consumers' weights);
- :class:`LayerObjective`, one layer's: built by :meth:`BoundObjective.layer` before the
  layer's selection starts (where an objective gathers its statistics, from the unpruned
  network and the network pruned so far), it scores item sets (a whole set, or the selected
  set plus each of many candidates at once), re-scores near-ties in float64, gives its value
  on fixed held-out data (the :class:`~gfsprune.targets.Tolerance` rule and the loss curves of
  the ``curves`` allocator read it after every greedy step) and, optionally, a first-order
  screen of the candidates.

The network's loss (:class:`gfsprune.scoring.loss.NetworkLoss`) is the default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.scoring.base import LossFn
from gfsprune.surgery import ChannelLayer, Masks

__all__ = ["BoundObjective", "LayerObjective", "Objective", "SelectionRun"]


@dataclass(frozen=True)
class SelectionRun:
    """What :func:`gfsprune.prune` gives an objective to bind to.

    Attributes:
        model: The working copy in eval mode, ``masks`` installed: each layer is selected on
            top of the choices of the layers before it.
        original: The unpruned model as the caller passed it (read-only: copy it to use it).
        masks: The channel masks of every layer.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch.
        graph: ``model``'s Torch-Pruning dependency graph.
        data: The run's re-iterable ``(inputs, targets)`` batches (not yet on ``device``).
        device: Where the run computes.
        rescale: Whether kept channels are multiplied by ``width / kept``.
    """

    model: nn.Module
    original: nn.Module
    masks: Masks
    loss_fn: LossFn
    graph: tp.DependencyGraph
    data: Iterable
    device: torch.device
    rescale: bool


class LayerObjective(ABC):
    """What the selection of one layer minimises, over sets of its items (channels, or heads
    and grouped-convolution offsets; :class:`~gfsprune.surgery.ChannelLayer`).

    Attributes:
        layer: The channel layer.
    """

    layer: ChannelLayer
    #: Scores every candidate of a step at once in closed form: the selection offers it all
    #: of them (``PruneConfig(candidates=...)`` applies to the other layers).
    closed_form: ClassVar[bool] = False

    @abstractmethod
    def score(self, sets: Sequence[Sequence[int]]) -> list[float]:
        """The value of each item set: one greedy step (an objective on mini-batches
        scores each step on a new one)."""

    def score_added(self, selected: Sequence[int], candidates: Sequence[int]) -> list[float]:
        """:meth:`score` of ``selected`` plus each candidate, one step (override where many
        additions are scored at once in closed form)."""
        return self.score([[*selected, c] for c in candidates])

    def refine(self, sets: Sequence[Sequence[int]]) -> list[float]:
        """The value of each item set as the last step scored it, in float64 (the near-ties
        of :func:`~gfsprune.core.select.rank` are decided on these). Default: :meth:`score`,
        for an objective computed in float64 on fixed data."""
        return self.score(sets)

    def refine_added(self, selected: Sequence[int], candidates: Sequence[int]) -> list[float]:
        """:meth:`refine` of ``selected`` plus each candidate."""
        return self.refine([[*selected, c] for c in candidates])

    @abstractmethod
    def held_out(self, items: Sequence[int]) -> float:
        """The value of one item set on fixed held-out data (the same at every call)."""

    def screen(self, selected: Sequence[int], allowed: Sequence[int], count: int) -> list[int]:
        """The ``count`` allowed items whose addition to ``selected`` lowers the value most
        to first order, for the step about to be scored (a schedule's screen). Default: none
        (refused)."""
        raise ConfigError(
            f"The {type(self).__name__} objective has no first-order screen; use the exact "
            "schedule or Fast(screen=None) (for the curves allocator's own pass: "
            "allocator=Curves(schedule=...))."
        )

    @abstractmethod
    def scale(self, channels: Sequence[int]) -> float:
        """The factor the kept ``channels`` carry (folded into the pruned model)."""


class BoundObjective(ABC):
    """An objective bound to one run (:meth:`Objective.bind`)."""

    @abstractmethod
    def layer(
        self, layer: ChannelLayer, *, draw: Callable[[], tuple], held_out: Sequence[tuple]
    ) -> LayerObjective:
        """``layer``'s objective, built before its selection starts (the layers before it
        already carry their choices on the masks).

        Args:
            layer: The channel layer.
            draw: The next mini-batch ``(inputs, targets)`` on the run's device, for an
                objective scored step by step on fresh batches.
            held_out: Fixed batches for :meth:`LayerObjective.held_out` (empty where the
                run needs no held-out value).
        """

    def after(self, layer: ChannelLayer) -> None:
        """After ``layer``'s choice is on the masks (e.g. re-solve its consumers' weights);
        default nothing."""
        return None

    def reset(self) -> None:
        """The model's weights changed (a refit, fine-tuning): forget every cache of them
        (default: nothing cached)."""
        return None


class Objective(ABC):
    """What each layer's selection minimises: options only; :meth:`bind` starts a run."""

    #: The name ``PruneConfig(objective=...)`` knows it by.
    name: ClassVar[str]
    #: Scores every candidate of a step at once, without a pass through the network: a run
    #: offers its layers in closed form all of them (:attr:`LayerObjective.closed_form`),
    #: and the ``curves`` allocator follows its exact greedy path.
    closed_form: ClassVar[bool] = False

    @abstractmethod
    def bind(self, run: SelectionRun) -> BoundObjective:
        """This objective for one run."""

    def settings(self) -> str:
        """A description that changes whenever the plan would (for resuming)."""
        return repr(self)
