"""Channel layers: the coupled channels that are kept or removed together.

A *channel layer* is one Torch-Pruning dependency group: channels of convolutions, BatchNorms,
residual adds, concatenations and depthwise convolutions that must be kept or removed together.
Its channels are numbered in the index space of the group's root module. Its *consumers* are
the convolutions (not depthwise) and linear layers that mix the group's channels into new
ones: masking there is exactly what removal does (see :mod:`gfsprune.surgery.masks`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from gfsprune._inputs import run_model
from gfsprune.errors import ModelError

__all__ = ["ChannelLayer", "Consumer", "Producer", "build_graph", "find_layers"]

# Groups that touch these modules cannot be masked exactly: they normalise or attend across
# channels, so zeroing a channel is not the same as removing it.
_UNMASKABLE = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.Embedding)


@dataclass(frozen=True)
class Consumer:
    """A module whose input carries some of a layer's channels.

    Attributes:
        name: The module's qualified name.
        index: Input positions (channel for convolutions, feature for linear layers), ``(k,)``.
        root: The layer channel that feeds each of those positions, ``(k,)``.
    """

    name: str
    index: torch.Tensor
    root: torch.Tensor


@dataclass(frozen=True)
class Producer:
    """A module whose outputs carry some of a layer's channels.

    Attributes:
        name: The module's qualified name.
        root: The layer channels its output channels carry, in order.
    """

    name: str
    root: tuple[int, ...]


@dataclass(frozen=True)
class ChannelLayer:
    """One selection layer: a group of coupled channels.

    Attributes:
        name: Qualified name of the group's root module (the index space of its channels).
        width: Number of channels in the group.
        producers: Modules whose outputs carry the group's channels (convolutions, norms).
        consumers: Where the group's channels enter channel-mixing modules.
    """

    name: str
    width: int
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]

    @property
    def segments(self) -> list[tuple[int, ...]]:
        """For groups joined by a concatenation, the channels each producer carries alone;
        each must keep at least one channel, or its module would be left empty."""
        return sorted({p.root for p in self.producers if len(p.root) < self.width})


def _execution_order(model: nn.Module, example_inputs: object) -> dict[nn.Module, int]:
    """The position of each module's first call in one forward pass."""
    order: dict[nn.Module, int] = {}

    def record(module: nn.Module, _args: tuple) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            run_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def _is_mixing(module: nn.Module) -> bool:
    """Convolutions (not depthwise) and linear layers combine input channels into new ones."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups == module.in_channels and module.groups > 1
        return not depthwise
    return False


def build_graph(model: nn.Module, example_inputs: object) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, with tracing failures made readable."""
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as err:  # tracing runs arbitrary user code; any failure means untraceable
        raise ModelError(
            f"Torch-Pruning could not trace {type(model).__name__} ({type(err).__name__}: "
            f"{err}); check that example_inputs match the model's forward() and that the "
            "model has no data-dependent control flow."
        ) from err


def find_layers(
    model: nn.Module,
    example_inputs: object,
    *,
    ignore: Iterable[nn.Module] = (),
    graph: tp.DependencyGraph | None = None,
) -> tuple[list[ChannelLayer], list[str]]:
    """Find the channel layers of ``model`` in input-to-output order.

    The module that produces the network's output (the classifier) is never pruned, and
    neither is any group that touches a module in ``ignore``.

    Returns:
        The prunable layers, and the names of groups skipped because they cannot be masked
        exactly (they pass through normalisations or attention across channels).
    """
    graph = graph or build_graph(model, example_inputs)
    order = _execution_order(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    weighted = [m for m in order if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    if not weighted:
        raise ModelError(
            f"{type(model).__name__} has no Conv or Linear layer that forward() calls; "
            "there is nothing to prune."
        )
    last = max(weighted, key=order.__getitem__)
    ignored = [last, *ignore]
    layers: list[tuple[int, ChannelLayer]] = []
    skipped: list[str] = []
    for group in graph.get_all_groups(ignored_layers=ignored):
        root = group[0].dep.target.module
        producers: list[Producer] = []
        consumers: list[Consumer] = []
        first = len(order)
        unmaskable = False
        for item in group:
            module = item.dep.target.module
            if isinstance(module, (nn.Parameter, *_UNMASKABLE)):
                unmaskable = True
            if module not in names:
                continue  # a Torch-Pruning op node (add, concat, reshape), not a module
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append(Producer(names[module], tuple(int(i) for i in item.root_idxs)))
                first = min(first, order.get(module, len(order)))
            elif _is_mixing(module):
                consumers.append(
                    Consumer(
                        name=names[module],
                        index=torch.as_tensor(list(item.idxs), dtype=torch.long),
                        root=torch.as_tensor(list(item.root_idxs), dtype=torch.long),
                    )
                )
        if unmaskable or not consumers:
            skipped.append(names[root])
            continue
        width = graph.get_pruner_of_module(root).get_out_channels(root)
        layer = ChannelLayer(names[root], int(width), tuple(producers), tuple(consumers))
        layers.append((first, layer))
    layers.sort(key=lambda pair: pair[0])
    return [layer for _, layer in layers], skipped
