"""The evaluator protocol: the loss of the network for several channel sets of one layer (the
engine of the :class:`~gfsprune.scoring.loss.NetworkLoss` objective)."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from gfsprune._inputs import map_tensors, run_model, tensors
from gfsprune.surgery import ChannelLayer, Masks

__all__ = ["Evaluator", "LossFn"]

# Samples per batched forward pass on a CPU: on resnet20 (2 cores, batch 64), passes of 64 or
# 128 samples scored candidates equally fast, 256 up to 1.2x and 512 up to 1.8x slower.
_CPU_SAMPLES = 128

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Evaluator(ABC):
    """Scores channel sets of one layer on one mini-batch: one small class per way of
    computing the same losses. :class:`~gfsprune.scoring.loss.NetworkLoss` builds it as
    ``cls(model, masks, loss_fn, graph=graph)``.

    Attributes:
        model: The network in eval mode, with ``masks`` installed.
        masks: The channel masks of every layer.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch.
        graph: ``model``'s Torch-Pruning dependency graph, where the caller has one (spares
            tracing the model again).
        max_batch: Cap on samples per forward pass (candidates x batch) for ``batched``;
            ``None`` derives it from ``memory`` (see ``chunk_size``).
        memory: Rough activation-memory budget in bytes for one batched forward pass.
    """

    model: nn.Module
    masks: Masks
    loss_fn: LossFn
    graph: tp.DependencyGraph | None = None
    max_batch: int | None = None
    memory: int = 1 << 30
    _float64: nn.Module | None = field(default=None, init=False, repr=False)

    def chunk_size(self, inputs: object, batch: int) -> int:
        """Candidates per forward pass. Without ``max_batch``: on a CPU, passes of about
        ``_CPU_SAMPLES`` samples (larger ones fall out of cache and run slower per sample,
        measured on resnet20); on a GPU, as many as fit ``memory``, a sample being assumed
        to need about 64 times its input in activations at once (wide early feature maps)."""
        if self.max_batch is not None:
            return max(1, self.max_batch // batch)
        found = tensors(inputs)
        if all(t.device.type == "cpu" for t in found):
            return max(1, _CPU_SAMPLES // batch)
        numel = sum(t[0].numel() for t in found)
        return max(1, self.memory // (64 * 4 * max(numel, 1) * batch))

    def gradient(
        self, inputs: object, targets: torch.Tensor, layer: ChannelLayer, keep: torch.Tensor
    ) -> torch.Tensor:
        """The derivative of the loss with respect to each channel factor of ``layer`` at
        ``keep`` (``(width,)``), by one forward and backward pass of the masked model."""
        keep = keep.detach().clone().requires_grad_(True)
        with torch.enable_grad(), self.masks.candidates(layer, keep[None]):
            loss = self.loss_fn(run_model(self.model, inputs), targets)
            (grad,) = torch.autograd.grad(loss, keep)
        return grad

    def reset(self) -> None:
        """Forget every copy and cache of the model: its weights have changed (a refit)."""
        if self._float64 is not None:
            self.masks.detach(self._float64)
            self._float64 = None

    @torch.no_grad()
    def precise(
        self, inputs: object, targets: torch.Tensor, layer: ChannelLayer, keep: torch.Tensor
    ) -> list[float]:
        """The loss for each row of ``keep``, as :meth:`__call__` gives it but in float64: one
        plain forward pass per row of a float64 copy of the masked model (made on first
        use). Every evaluator shares this one path, so the tie rule
        (:func:`gfsprune.core.select.rank`) decides near-ties on the same numbers whichever
        evaluator scored the step."""
        if self._float64 is None:
            with self.masks.suspended():  # a copy of the hooks would mask twice
                net = copy.deepcopy(self.model).double()
            self._float64 = self.masks.attach(net)
        inputs, targets = map_tensors((inputs, targets), _as_float64)
        return self._one_by_one(self._float64, inputs, targets, layer, keep)

    @torch.no_grad()
    def _one_by_one(
        self,
        net: nn.Module,
        inputs: object,
        targets: torch.Tensor,
        layer: ChannelLayer,
        keep: torch.Tensor,
    ) -> list[float]:
        """The loss for each row of ``keep``: one plain masked forward pass of ``net`` per
        row (the reference way of scoring)."""
        losses = []
        for row in keep:
            with self.masks.candidates(layer, row[None]):
                losses.append(float(self.loss_fn(run_model(net, inputs), targets)))
        return losses

    @abstractmethod
    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, layer: ChannelLayer, keep: torch.Tensor
    ) -> list[float]:
        """The loss for each row of ``keep`` (``(K, width)`` channel factors)."""


def _as_float64(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t
