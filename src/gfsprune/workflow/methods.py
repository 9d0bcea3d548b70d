"""The comparison methods: ways of choosing a pruned network's channels, one class each.

Greedy forward selection (``gfs``) runs first and fixes the architecture: every other method
keeps exactly as many channels of each layer as it did, so only *which* channels are kept
differs (``scratch`` re-initialises the architecture instead). A method is one small class
behind :class:`Method`: it builds the pruned network from a :class:`MethodContext`.

- ``gfs``: :func:`gfsprune.prune`, greedy forward selection by loss;
- ``l1``, ``bn``, ``taylor``, ``random``: Torch-Pruning's filter L1 magnitude
  (``GroupMagnitudeImportance(p=1)``), BatchNorm scale (network slimming), first-order Taylor
  and random importances, each scored on the layer's whole dependency group; the top channels
  are kept, with no rescale, as Torch-Pruning does;
- ``backward``: greedy backward elimination by loss;
- ``scratch``: the same architecture re-initialised at random and trained from scratch.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader

from gfsprune.core.config import PruneConfig
from gfsprune.core.prune import prune
from gfsprune.errors import ModelError
from gfsprune.models import init_weights
from gfsprune.plan import PruneResult
from gfsprune.surgery import build_graph, find_layers, prune_channels
from gfsprune.targets import Widths
from gfsprune.workflow.seeding import seeded

__all__ = [
    "METHODS",
    "Backward",
    "Greedy",
    "Importance",
    "Method",
    "MethodContext",
    "Scratch",
    "importance_channels",
    "reinitialize",
]

# Taylor importance needs gradients; they are summed over this many training mini-batches.
_GRADIENT_BATCHES = 4


@dataclass(frozen=True)
class MethodContext:
    """What every method gets.

    Attributes:
        model: The pre-trained network (on ``device``, eval mode); methods must not modify it.
        greedy: Greedy forward selection's result; its widths are every method's widths.
        loader: A fresh loader of the training batches, in the same seeded order each call.
        example_inputs: Inputs for tracing.
        prune: The selection options of the greedy methods (seed and device already set).
        seed: The comparison's seed.
        device: Where to work.
        progress: Show progress bars.
    """

    model: nn.Module
    greedy: PruneResult
    loader: Callable[[], DataLoader]
    example_inputs: torch.Tensor
    prune: PruneConfig
    seed: int
    device: torch.device
    progress: bool

    @property
    def widths(self) -> dict[str, int]:
        """Greedy selection's width of each layer it pruned."""
        return {p.name: len(p.kept) for p in self.greedy.plan}


class Method(ABC):
    """One way of choosing the channels at greedy selection's widths."""

    #: The name ``--methods`` and the results table use.
    name: ClassVar[str]
    #: Trained with the comparison's ``scratch`` recipe instead of its fine-tuning.
    from_scratch: ClassVar[bool] = False

    @abstractmethod
    def build(self, context: MethodContext) -> nn.Module:
        """The pruned network."""


class Greedy(Method):
    """Greedy forward selection's own network (built before the methods run)."""

    name = "gfs"

    def build(self, context: MethodContext) -> nn.Module:
        return context.greedy.model


class Backward(Method):
    """Greedy backward elimination by loss, to the same widths."""

    name = "backward"

    def build(self, context: MethodContext) -> nn.Module:
        config = dataclasses.replace(context.prune, strategy="backward")
        with seeded(context.seed):  # the training images' augmentation draws from it
            return prune(
                context.model,
                context.loader(),
                context.example_inputs,
                target=Widths(context.widths),
                config=config,
                progress=context.progress,
            ).model


class Importance(Method):
    """The top channels of each layer by a Torch-Pruning importance, with no rescale.

    Args:
        name: The method's name.
        importance: Makes the importance (called once per build).
        gradients: Whether it reads gradients (accumulated on a few training batches first).
    """

    def __init__(
        self, name: str, importance: Callable[[], tp.importance.Importance], *, gradients: bool
    ) -> None:
        self.name = name  # type: ignore[misc]  # one class, several named instances
        self.importance = importance
        self.gradients = gradients

    def build(self, context: MethodContext) -> nn.Module:
        work = copy.deepcopy(context.model).to(context.device).eval()
        if self.gradients:
            with seeded(context.seed):
                _accumulate_gradients(work, context.loader(), context.device)
        with seeded(context.seed):  # RandomImportance draws from torch's global generator
            kept = importance_channels(
                work, context.example_inputs, context.widths, self.importance()
            )
        work.zero_grad(set_to_none=True)
        return prune_channels(work, context.example_inputs, kept)


class Scratch(Method):
    """The same architecture re-initialised at random, trained from scratch."""

    name = "scratch"
    from_scratch = True

    def build(self, context: MethodContext) -> nn.Module:
        return reinitialize(context.greedy.model, seed=context.seed)


#: Every comparison method by name, in the order the report lists them.
METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Greedy(),
        Importance("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1), gradients=False),
        Importance("bn", tp.importance.BNScaleImportance, gradients=False),
        Importance("taylor", tp.importance.TaylorImportance, gradients=True),
        Importance("random", tp.importance.RandomImportance, gradients=False),
        Backward(),
        Scratch(),
    )
}


def importance_channels(
    model: nn.Module,
    example_inputs: torch.Tensor,
    widths: Mapping[str, int],
    importance: tp.importance.Importance,
) -> dict[str, list[int]]:
    """The ``widths[layer]`` channels of each layer that ``importance`` scores highest.

    Each channel layer's importance is computed on its whole Torch-Pruning dependency group
    (every coupled convolution, BatchNorm and consumer). Gradient-based importances read the
    ``.grad`` already on the model's parameters.
    """
    graph = build_graph(model, example_inputs)
    layers, _ = find_layers(model, example_inputs, graph=graph)
    modules = dict(model.named_modules())
    kept = {}
    for layer in layers:
        if layer.name not in widths:
            continue
        root = modules[layer.name]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        group = graph.get_pruning_group(root, handler, list(range(layer.width)))
        with torch.no_grad():
            scores = importance(group)
        if scores is None or scores.shape != (layer.width,):
            raise ModelError(
                f"{type(importance).__name__} gives no score per channel of layer "
                f"'{layer.name}' ({layer.width} channels); bn needs a BatchNorm in every "
                "channel layer. Leave that method out of the comparison."
            )
        kept[layer.name] = sorted(torch.topk(scores, widths[layer.name]).indices.tolist())
    return kept


def reinitialize(model: nn.Module, *, seed: int) -> nn.Module:
    """A copy of ``model`` with fresh random weights, drawn as the zoo draws them."""
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).cpu()  # drawn on the CPU: seeded the same on every machine
    with seeded(seed):
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # also clears BatchNorm running statistics
        init_weights(fresh)
    return fresh.to(device)


def _accumulate_gradients(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    model.zero_grad(set_to_none=True)
    for step, (images, labels) in enumerate(loader):
        if step == _GRADIENT_BATCHES:
            break
        F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
