"""The comparison methods: ways of choosing a pruned network's channels, one class each.

Greedy forward selection (``gfs``) runs first and fixes the architecture. Most methods keep
exactly as many channels of each layer as it did, so only *which* channels are kept differs
(``scratch`` re-initialises the architecture instead); Torch-Pruning's own pipelines choose
their own widths at the same MACs. A method is one small class behind :class:`Method`: it
builds the pruned network from a :class:`MethodContext`.

- ``gfs``: :func:`gfsprune.prune`, greedy forward selection by loss;
- ``l1``, ``bn``, ``taylor``, ``random``: Torch-Pruning's filter L1 magnitude
  (``GroupMagnitudeImportance(p=1)``), BatchNorm scale (network slimming), first-order Taylor
  and random importances, each scored on the layer's whole dependency group; the top channels
  are kept, with no rescale, as Torch-Pruning does;
- ``backward``: greedy backward elimination by loss;
- ``scratch``: the same architecture re-initialised at random and trained from scratch;
- ``tp-l1``, ``tp-l2-global``, ``tp-taylor-global``, ``tp-lamp-global``: Torch-Pruning's
  ``MetaPruner`` as its users run it, choosing its own widths: uniform L1 magnitude, and
  global L2 magnitude, Taylor and LAMP ranking (scores normalised per group, one threshold
  for the network), each with its pruning ratio bisected to gfs's MACs (:func:`match_macs`),
  or, where gfs pruned to a latency budget, to gfs's measured latency (:func:`match_share`).
  It prunes the channel layers gfs prunes (never the classifier).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ModelError
from gfsprune.models import init_weights
from gfsprune.plan import PruneResult
from gfsprune.surgery import ChannelLayer, build_graph, find_layers, prune_channels
from gfsprune.targets import Widths
from gfsprune.workflow.seeding import seeded

__all__ = [
    "METHODS",
    "Backward",
    "Greedy",
    "Importance",
    "Matched",
    "Method",
    "MethodContext",
    "Scratch",
    "TorchPruning",
    "importance_channels",
    "match_macs",
    "match_share",
    "reinitialize",
]

# Taylor importance needs gradients; they are summed over this many training mini-batches.
_GRADIENT_BATCHES = 4
# Torch-Pruning's pipelines must reach gfs's MACs within this relative tolerance; 12 halvings
# of the pruning ratio (2**-12) are finer than one channel of a 1024-channel layer.
MACS_TOLERANCE = 0.01
BISECTION_STEPS = 12
# ... or gfs's measured latency within this (timings vary by a percent or two between runs).
LATENCY_TOLERANCE = 0.02


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
        loss_fn: The loss of ``(outputs, targets)`` that loss-based methods (``backward``,
            the Taylor gradients) use, as :func:`gfsprune.prune` takes it; ``None``: the
            cross-entropy on labels. With distillation the loader yields the teacher's
            outputs as targets (:func:`gfsprune.distill`).
        latency: Where gfs pruned to a latency budget: a model's measured latency as a
            share of the unpruned model's (at the budget's batch size), which the methods
            choosing their own widths match to gfs's instead of its MACs; ``None``: MACs.
    """

    model: nn.Module
    greedy: PruneResult
    loader: Callable[[], Iterable]
    example_inputs: torch.Tensor
    prune: PruneConfig
    seed: int
    device: torch.device
    progress: bool
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    latency: Callable[[nn.Module], float] | None = None

    @property
    def widths(self) -> dict[str, int]:
        """Greedy selection's width of each layer it pruned."""
        return {p.name: len(p.kept) for p in self.greedy.plan}


class Method(ABC):
    """One way of choosing a pruned network's channels."""

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
        # The widths are given: no schedule or rounding of greedy selection's applies.
        config = dataclasses.replace(
            context.prune, strategy="backward", schedule="exact", round_to=1
        )
        with seeded(context.seed):  # the training images' augmentation draws from it
            return prune(
                context.model,
                context.loader(),
                context.example_inputs,
                target=Widths(context.widths),
                config=config,
                loss_fn=context.loss_fn,
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
        work = _working_copy(context, gradients=self.gradients)
        with seeded(context.seed):  # RandomImportance draws from torch's global generator
            kept = importance_channels(
                work, context.example_inputs, context.widths, self.importance()
            )
        work.zero_grad(set_to_none=True)
        return prune_channels(work, context.example_inputs, kept)


class TorchPruning(Method):
    """Torch-Pruning's ``MetaPruner`` with its own widths, at gfs's MACs (or latency).

    The pruning ratio (a share of every layer's channels, or of all of them with
    ``global_pruning``) is bisected until :func:`gfsprune.count` measures greedy selection's
    MACs ratio within :data:`MACS_TOLERANCE` (relative), or as close as the channel steps
    allow: the MACs in the results row then show by how much it missed. Where gfs pruned to
    a latency budget (``MethodContext.latency``), gfs's measured latency share is matched
    instead, within :data:`LATENCY_TOLERANCE`. Only the channel
    layers greedy selection prunes are pruned (ignoring the classifier, as gfs does), with
    the comparison's ``round_to``. Gradient-based importances read gradients summed over a
    few training batches of the unpruned model.

    Args:
        name: The method's name.
        importance: Makes the importance (called once per pruning).
        global_pruning: Rank all layers' channels together (Torch-Pruning's
            ``global_pruning``) instead of pruning the same share of each layer.
    """

    def __init__(
        self,
        name: str,
        importance: Callable[[], tp.importance.Importance],
        *,
        global_pruning: bool,
    ) -> None:
        self.name = name  # type: ignore[misc]  # one class, several named instances
        self.importance = importance
        self.global_pruning = global_pruning

    def build(self, context: MethodContext) -> nn.Module:
        gradients = isinstance(self.importance(), tp.importance.GroupTaylorImportance)
        work = _working_copy(context, gradients=gradients)
        layers, _ = find_layers(work, context.example_inputs)
        # Torch-Pruning prunes attention heads only when told each module's head count, so
        # unit layers are left whole here (only gfs and the same-widths methods prune them).
        pruned = {p.name for layer in layers if layer.units is None for p in layer.producers}
        ignored = [
            name
            for name, m in work.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and name not in pruned
        ]
        round_to = context.prune.round_to if context.prune.round_to > 1 else None

        def prune_at(ratio: float) -> nn.Module:
            trial = _copy_with_gradients(work)
            modules = dict(trial.named_modules())
            pruner = tp.pruner.MetaPruner(
                trial,
                context.example_inputs,
                importance=self.importance(),
                global_pruning=self.global_pruning,
                pruning_ratio=ratio,
                ignored_layers=[modules[name] for name in ignored],
                round_to=round_to,
            )
            pruner.step()
            trial.zero_grad(set_to_none=True)
            return trial

        if context.latency is not None:
            target = context.latency(context.greedy.model)
            return match_share(
                prune_at, context.latency, target=target, tolerance=LATENCY_TOLERANCE
            ).model
        matched = match_macs(
            prune_at,
            context.example_inputs,
            macs=count(work, context.example_inputs)[0],
            target=context.greedy.macs_ratio,
        )
        return matched.model


@dataclass(frozen=True)
class Matched:
    """What :func:`match_share` found.

    Attributes:
        model: The pruned model at ``ratio``.
        ratio: The pruning ratio.
        share: Its cost over the unpruned model's (the MACs, as :func:`gfsprune.count`
            counts them, for :func:`match_macs`).
        steps: Prunings tried.
        within: Whether ``share`` is within the tolerance of the target.
    """

    model: nn.Module
    ratio: float
    share: float
    steps: int
    within: bool


def match_share(
    prune_at: Callable[[float], nn.Module],
    share_of: Callable[[nn.Module], float],
    *,
    target: float,
    tolerance: float = MACS_TOLERANCE,
    steps: int = BISECTION_STEPS,
) -> Matched:
    """Bisect a pruning ratio in [0, 1) until the pruned model's cost share (``share_of``:
    its cost over the unpruned model's) is ``target``.

    The share falls as the pruning ratio grows, except where Torch-Pruning leaves a group
    whole rather than empty it: a ratio whose model costs more than a smaller ratio's is
    treated as too large.

    Args:
        prune_at: Prunes a fresh copy of the model at a ratio.
        share_of: A pruned model's cost share (MACs counted, or latency measured).
        target: The share to reach, in (0, 1).
        tolerance: Stop once within ``tolerance * target`` of it.
        steps: Stop after this many prunings.

    Returns:
        The closest model found (the first within the tolerance).
    """
    low, high, low_share = 0.0, 1.0, 1.0  # low_share: the share at ``low``
    best: Matched | None = None
    for step in range(1, steps + 1):
        middle = (low + high) / 2
        model = prune_at(middle)
        achieved = share_of(model)
        within = abs(achieved - target) <= tolerance * target
        if best is None or abs(achieved - target) < abs(best.share - target):
            best = Matched(model, middle, achieved, step, within)
        if within:
            break
        if target < achieved <= low_share:
            low, low_share = middle, achieved
        else:
            high = middle
    assert best is not None  # steps >= 1
    return dataclasses.replace(best, steps=step)


def match_macs(
    prune_at: Callable[[float], nn.Module],
    example_inputs: object,
    *,
    macs: int,
    target: float,
    tolerance: float = MACS_TOLERANCE,
    steps: int = BISECTION_STEPS,
) -> Matched:
    """:func:`match_share` on the MACs: until the pruned model keeps ``target`` of ``macs``
    (the unpruned model's), counted on ``example_inputs``.

    Example:
        >>> keep = lambda r: nn.Linear(10, 10 - int(10 * r), bias=False)
        >>> match_macs(keep, torch.zeros(1, 10), macs=100, target=0.3).share
        0.3
    """
    return match_share(
        prune_at,
        lambda model: count(model, example_inputs)[0] / macs,
        target=target,
        tolerance=tolerance,
        steps=steps,
    )


class Scratch(Method):
    """The same architecture re-initialised at random, trained from scratch."""

    name = "scratch"
    from_scratch = True

    def build(self, context: MethodContext) -> nn.Module:
        return reinitialize(context.greedy.model, seed=context.seed)


def _group_norm(p: int) -> Callable[[], tp.importance.Importance]:
    """Torch-Pruning's group magnitude importance with the L``p`` norm."""
    return lambda: tp.importance.GroupMagnitudeImportance(p=p)


#: Every comparison method by name, in the order the report lists them.
METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Greedy(),
        Importance("l1", _group_norm(1), gradients=False),
        Importance("bn", tp.importance.BNScaleImportance, gradients=False),
        Importance("taylor", tp.importance.TaylorImportance, gradients=True),
        Importance("random", tp.importance.RandomImportance, gradients=False),
        Backward(),
        Scratch(),
        TorchPruning("tp-l1", _group_norm(1), global_pruning=False),
        TorchPruning("tp-l2-global", _group_norm(2), global_pruning=True),
        TorchPruning("tp-taylor-global", tp.importance.GroupTaylorImportance, global_pruning=True),
        TorchPruning("tp-lamp-global", tp.importance.LAMPImportance, global_pruning=True),
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
        group, positions = _scored_group(graph, modules, layer)
        with torch.no_grad():
            scores = importance(group)
        if scores is None or scores.shape != (len(positions),):
            raise ModelError(
                f"{type(importance).__name__} gives no score per channel of layer "
                f"'{layer.name}' ({layer.width} channels); bn needs a BatchNorm in every "
                "channel layer. Leave that method out of the comparison."
            )
        channel_scores = torch.zeros(layer.width, dtype=scores.dtype)
        channel_scores[positions] = scores.detach().cpu()
        # Items (a head, or one offset of every group of a grouped convolution) are kept or
        # removed whole: an item scores the sum of its channels' scores.
        item_scores = channel_scores[layer.item_index].sum(dim=1)
        top = torch.topk(item_scores, widths[layer.name] // layer.item_size).indices
        kept[layer.name] = sorted(layer.channels(top.tolist()))
    return kept


def _scored_group(
    graph: tp.DependencyGraph, modules: Mapping[str, nn.Module], layer: ChannelLayer
) -> tuple[tp.Group, torch.Tensor]:
    """The Torch-Pruning group an importance scores for ``layer``, and the layer channel of
    each of its scores: the root's whole group for a channel layer; for a unit layer (its
    attention or MLP module is no group root) the group of its consumer's input positions."""
    if layer.units is None:
        root = modules[layer.name]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        return graph.get_pruning_group(root, handler, list(range(layer.width))), torch.arange(
            layer.width
        )
    consumer = layer.consumers[0]
    module = modules[consumer.name]
    handler = graph.get_pruner_of_module(module).prune_in_channels
    return graph.get_pruning_group(module, handler, consumer.index.tolist()), consumer.root


def _copy_with_gradients(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters carry copies of its gradients
    (``copy.deepcopy`` drops ``.grad``)."""
    twin = copy.deepcopy(model)
    for source, target in zip(model.parameters(), twin.parameters(), strict=True):
        if source.grad is not None:
            target.grad = source.grad.clone()
    return twin


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


def _working_copy(context: MethodContext, *, gradients: bool) -> nn.Module:
    """A copy of the unpruned model to score, with gradients summed over a few training
    batches on its parameters if ``gradients``."""
    work = copy.deepcopy(context.model).to(context.device).eval()
    if gradients:
        with seeded(context.seed):
            _accumulate_gradients(work, context.loader(), context.device, context.loss_fn)
    return work


def _accumulate_gradients(
    model: nn.Module, batches: Iterable, device: torch.device, loss_fn: Callable | None
) -> None:
    loss_fn = loss_fn or F.cross_entropy
    model.zero_grad(set_to_none=True)
    for step, (images, targets) in enumerate(batches):
        if step == _GRADIENT_BATCHES:
            break
        loss_fn(model(images.to(device)), targets.to(device)).backward()
