"""What a pruning run produced: the plan per layer, its trace, and the smaller model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["LayerLog", "LayerPlan", "PruneResult"]


@dataclass(frozen=True)
class LayerPlan:
    """What was kept of one channel layer.

    Attributes:
        name: Qualified name of the layer's root module.
        width: Its original number of channels.
        kept: The kept channels, whole items (a head's or a grouped-convolution offset's
            channels together): in the order picked by forward selection (then any item
            added to keep a concatenated part non-empty), ascending after backward
            elimination.
        scale: The mean-field rescale of the kept channels (``width / len(kept)`` with
            rescaling, else 1), folded into the pruned network: by default into the running
            statistics of the BatchNorm after a consumer, where there is one
            (``rescale_into="batchnorm"``), else into the consumers' weights.
    """

    name: str
    width: int
    kept: list[int]
    scale: float


@dataclass(frozen=True)
class LayerLog:
    """The selection trace of one layer.

    Attributes:
        name: Qualified name of the layer's root module.
        losses: One loss per greedy step (one item): after each pick (forward selection,
            scored on that step's mini-batch; under ``Tolerance``, on the fixed held-out
            batches) or after each removal (backward elimination). Items added afterwards to
            keep a concatenated part non-empty have no entry.
        reference: The layer's loss at full width on the held-out batches, where a
            ``Tolerance`` target measured one.
    """

    name: str
    losses: list[float]
    reference: float | None = None


@dataclass
class PruneResult:
    """The outcome of :func:`gfsprune.prune`.

    Attributes:
        model: The physically smaller network (channels removed, not masked).
        plan: Per channel layer, in the order visited.
        layers: Per channel layer, its selection trace (:class:`LayerLog`).
        macs_before, macs_after, params_before, params_after: Costs of one forward pass.
        example_inputs: The inputs the model was traced with (needed to rebuild it).
        skipped: Channel groups and unit modules (attention, gated MLPs) left at full width
            because they cannot be masked exactly, each as ``"name (reason)"``.
        metrics_before, metrics_after: Every metric the run's cost model measures (its
            MACs and parameters among them), of the unpruned and of the pruned model.
    """

    model: nn.Module
    plan: list[LayerPlan]
    layers: list[LayerLog]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    example_inputs: object
    skipped: list[str]
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        """MACs after pruning as a fraction of before."""
        return self.macs_after / self.macs_before

    @property
    def params_ratio(self) -> float:
        """Parameters after pruning as a fraction of before."""
        return self.params_after / self.params_before
