"""Channel layers: the coupled channels that are kept or removed together.

A *channel layer* is one Torch-Pruning dependency group: channels of convolutions, BatchNorms,
residual adds, concatenations and depthwise convolutions that must be kept or removed together.
Its channels are numbered in the index space of the group's root module. Its *consumers* are
the convolutions (not depthwise) and linear layers that mix the group's channels into new
ones: masking there is exactly what removal does (see :mod:`gfsprune.surgery.masks`).

Selection picks *items*, tuples of a layer's channels kept or removed together: one channel
each, except where a grouped convolution reads or writes the layer (item ``j``: offset ``j``
of every group, so that every group keeps the same offsets, which is what Torch-Pruning can
remove) and in unit layers, where an item is an attention head or a gated MLP's hidden
neuron (a layer of its own, found by :mod:`gfsprune.surgery.units`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from gfsprune._inputs import run_hooked
from gfsprune.errors import ModelError
from gfsprune.surgery.graph import build_graph, dependency_groups
from gfsprune.surgery.units import UnitHandler, UnitLayout, find_units

__all__ = ["ChannelLayer", "Consumer", "Member", "Producer", "find_layers"]

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
class Member:
    """One module whose parameters a layer's removal cuts, with Torch-Pruning's function for it.

    Attributes:
        name: The module's qualified name.
        prune: Torch-Pruning's pruning function, ``prune(module, positions)``.
        dim: The dimension Torch-Pruning sets on the function's pruner before each call.
        index: Positions in the module (output or input channels, as ``prune`` cuts), ``(k,)``.
        root: The layer channel at each of those positions, ``(k,)``.
    """

    name: str
    prune: Callable[[nn.Module, Sequence[int]], object]
    dim: int
    index: torch.Tensor
    root: torch.Tensor


@dataclass(frozen=True)
class ChannelLayer:
    """One selection layer: a group of coupled channels, selected in items.

    Attributes:
        name: Qualified name of the group's root module (the index space of its channels), or
            of the module for a unit layer.
        width: Number of channels in the group.
        producers: Modules whose outputs carry the group's channels (convolutions, norms).
        consumers: Where the group's channels enter channel-mixing modules.
        items: The channels of each item, all of one size; ``None``: one item per channel.
        units: For a unit layer, the handler that removes its units (items: attention heads
            or MLP neurons); ``None`` for a Torch-Pruning group.
        members: For a Torch-Pruning group, every module its removal cuts (the producers and
            consumers, and the norms, depthwise convolutions ... between them).
    """

    name: str
    width: int
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]
    items: tuple[tuple[int, ...], ...] | None = None
    units: type[UnitHandler] | None = None
    members: tuple[Member, ...] = ()

    @property
    def n_items(self) -> int:
        """Number of items."""
        return self.width if self.items is None else len(self.items)

    @property
    def item_size(self) -> int:
        """Channels per item."""
        return 1 if self.items is None else len(self.items[0])

    @property
    def item_index(self) -> torch.Tensor:
        """The channels of every item, ``(n_items, item_size)``."""
        if self.items is None:
            return torch.arange(self.width)[:, None]
        return torch.as_tensor(self.items)

    def channels(self, items: Iterable[int]) -> list[int]:
        """The channels of ``items``, item by item in the order given."""
        if self.items is None:
            return list(items)
        return [c for i in items for c in self.items[i]]

    def items_of(self, channels: Iterable[int]) -> list[int]:
        """The items with a channel among ``channels``, ascending."""
        if self.items is None:
            return sorted(set(channels))
        wanted = set(channels)
        return [i for i, item in enumerate(self.items) if wanted & set(item)]

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

    run_hooked(model, example_inputs, before=record)
    return order


def _is_mixing(module: nn.Module) -> bool:
    """Convolutions (not depthwise) and linear layers combine input channels into new ones."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups == module.in_channels and module.groups > 1
        return not depthwise
    return False


def _is_grouped(module: nn.Module) -> bool:
    """A convolution with groups that is not depthwise (in and out channels coupled)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups != module.out_channels
    )


def _grouped_items(
    width: int, reads: Sequence[tuple[str, int, int, dict[int, int]]]
) -> tuple[tuple[int, ...], ...] | None | str:
    """Items for a layer that grouped convolutions read or write: ``reads`` holds, per such
    convolution, its name, its groups, its channels on the layer's side (inputs or outputs)
    and the layer channel at each of those positions; the layer must cover them all.

    Offset ``j`` of every group is one item (joined across convolutions), so that every
    group keeps the same offsets: the index sets Torch-Pruning removes correctly. ``None``
    where every channel is its own item; a reason where no such items exist."""
    parent = list(range(width))

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for name, groups, size, root_of in reads:
        per_group = size // groups
        for j in range(per_group):
            roots = [root_of.get(g * per_group + j) for g in range(groups)]
            if None in roots:
                return f"grouped convolution '{name}' reads it together with other channels"
            for r in roots[1:]:
                parent[find(r)] = find(roots[0])
    members: dict[int, list[int]] = {}
    for c in range(width):
        members.setdefault(find(c), []).append(c)
    items = sorted(tuple(m) for m in members.values())
    if len(items) == width:
        return None
    if len({len(item) for item in items}) > 1:
        return "grouped convolutions split it into items of different sizes"
    return tuple(items)


def find_layers(
    model: nn.Module,
    example_inputs: object,
    *,
    ignore: Iterable[nn.Module] = (),
    graph: tp.DependencyGraph | None = None,
) -> tuple[list[ChannelLayer], list[str]]:
    """Find the channel layers of ``model`` in input-to-output order.

    The module that produces the network's output (the classifier) is never pruned, and
    neither is any group that touches a module in ``ignore``. Modules of a type
    :mod:`gfsprune.surgery.units` knows (attention, gated MLPs) become unit layers in place
    of the groups through their projections.

    Returns:
        The prunable layers, and the groups (and unit modules) skipped because they
        cannot be masked exactly, each as ``"name (reason)"``.
    """
    graph = graph or build_graph(model, example_inputs)
    order = _execution_order(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    weighted = [m for m in order if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    if not weighted:
        raise ModelError(
            f"{type(model).__name__} has no Conv or Linear layer that forward() calls; "
            "there is nothing to prune."
        )
    last = max(weighted, key=order.__getitem__)
    ignored = [last, *ignore]
    units, refused = find_units(model)
    skipped = [f"{name} ({reason})" for name, reason in refused.items()]
    layers: list[tuple[int, ChannelLayer]] = []
    for name, (handler, layout) in units.items():
        members = {modules[n] for n, _ in layout.producers} | {modules[layout.consumer]}
        # The output module may read the units (a base model's last MLP): its width stays.
        if modules[name] in order and not (members - {last}) & set(ignored):
            layers.append((order[modules[name]], _unit_layer(name, handler, layout)))
    unit_outputs = {n for _, layout in units.values() for n, _ in layout.producers}
    unit_inputs = {layout.consumer for _, layout in units.values()}
    # Unit layers cover their projections and the modules' other layers (a multi-query
    # attention's shared key and value stay whole), so no group is rooted there; this also
    # spares Torch-Pruning a residual stream it cannot always map (a 2-layer LLaMA's did not
    # finish in 10 minutes).
    inside = {n for n in modules if any(n.startswith(f"{name}.") for name in units)}
    covered = [
        modules[n]
        for n in sorted(unit_outputs | unit_inputs | inside)
        if isinstance(modules[n], nn.Linear | nn.modules.conv._ConvNd)
    ]
    for root, group in dependency_groups(graph, ignored + covered):
        if isinstance(group, str):
            skipped.append(f"{names.get(root, type(root).__name__)} ({group})")
            continue
        producers: list[Producer] = []
        consumers: list[Consumer] = []
        members: list[Member] = []
        reads: list[tuple[str, int, int, dict[int, int]]] = []
        first = len(order)
        unmaskable = None
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.Parameter):
                unmaskable = unmaskable or "bare parameter (an embedding or a bias table)"
            elif isinstance(module, _UNMASKABLE):
                unmaskable = unmaskable or f"{type(module).__name__}, which mixes its channels"
            if module not in names:
                continue  # a Torch-Pruning op node (add, concat, reshape), not a module
            roots = [int(i) for i in item.root_idxs]
            positions = dict(zip((int(i) for i in item.idxs), roots, strict=True))
            index = torch.as_tensor(list(item.idxs), dtype=torch.long)
            root_index = torch.as_tensor(roots, dtype=torch.long)
            members.append(
                Member(
                    names[module], item.dep.handler, item.dep.target.pruning_dim, index, root_index
                )
            )
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append(Producer(names[module], tuple(roots)))
                first = min(first, order.get(module, len(order)))
                if _is_grouped(module):
                    reads.append((names[module], module.groups, module.out_channels, positions))
            elif _is_mixing(module):
                consumers.append(Consumer(name=names[module], index=index, root=root_index))
                if _is_grouped(module):
                    reads.append((names[module], module.groups, module.in_channels, positions))
        if {p.name for p in producers} & unit_outputs or {c.name for c in consumers} & unit_inputs:
            continue  # through a unit module's projections: its unit layer covers it
        width = int(graph.get_pruner_of_module(root).get_out_channels(root))
        reached = set().union(*(c.root.tolist() for c in consumers))
        items = _grouped_items(width, reads)
        if unmaskable:
            reason = f"it passes through a {unmaskable}"
        elif not consumers:
            reason = "no Conv or Linear layer reads it"
        elif len(reached) < width:
            reason = f"{width - len(reached)} channels reach no Conv or Linear layer (attention?)"
        elif isinstance(items, str):
            reason = items
        else:
            layer = ChannelLayer(
                names[root],
                width,
                tuple(producers),
                tuple(consumers),
                items,
                members=tuple(members),
            )
            layers.append((first, layer))
            continue
        skipped.append(f"{names[root]} ({reason})")
    layers.sort(key=lambda pair: pair[0])
    inconsistent = _inconsistent([layer for _, layer in layers], modules)
    skipped += [f"{name} ({reason})" for name, reason in inconsistent.items()]
    return [layer for _, layer in layers if layer.name not in inconsistent], skipped


def _inconsistent(layers: Sequence[ChannelLayer], modules: dict[str, nn.Module]) -> dict[str, str]:
    """Layers whose groups Torch-Pruning mapped inconsistently (name to the reason): a
    consumer position past the consumer's inputs, or positions of a module that two layers
    both cut (each position belongs to one group; through splits and slices it misreads,
    Torch-Pruning can give one to two)."""
    reasons: dict[str, str] = {}
    for layer in layers:
        for c in layer.consumers:
            module = modules[c.name]
            size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            if len(c.index) and int(c.index.max()) >= size:
                reasons[layer.name] = (
                    f"Torch-Pruning maps its channel to input {int(c.index.max())} of "
                    f"'{c.name}', which has {size}"
                )
    owner: dict[tuple[str, object, int], dict[int, str]] = {}
    for layer in layers:
        for m in layer.members:
            claimed = owner.setdefault((m.name, m.prune, m.dim), {})
            for position in m.index.tolist():
                other = claimed.setdefault(position, layer.name)
                if other != layer.name:
                    reason = f"Torch-Pruning gives channels of '{m.name}' to it and to '{other}'"
                    reasons.setdefault(layer.name, reason)
                    reasons.setdefault(other, reason)
    return reasons


def _unit_layer(name: str, handler: type[UnitHandler], layout: UnitLayout) -> ChannelLayer:
    """The unit layer of one module: the inputs of its output projection."""
    size = layout.size
    width = layout.count * size
    everything = torch.arange(width)
    return ChannelLayer(
        name=name,
        width=width,
        producers=tuple(Producer(n, roots) for n, roots in layout.producers),
        consumers=(Consumer(layout.consumer, everything, everything),),
        items=tuple(tuple(range(u * size, (u + 1) * size)) for u in range(layout.count)),
        units=handler,
    )
