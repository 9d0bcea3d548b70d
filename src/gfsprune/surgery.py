"""Network surgery: find the coupled channel layers, mask them, and remove channels for real.

A *channel layer* is one Torch-Pruning dependency group: channels of convolutions, BatchNorms,
residual adds, concatenations and depthwise convolutions that must be kept or removed together.
Its channels are numbered in the index space of the group's root module.

Masking works at the group's *consumers*: the convolutions (not depthwise) and linear layers
that mix the group's channels into new ones. A removed channel then contributes nothing
downstream, which is exactly what physical removal does, so the masked network and the pruned
network compute the same function. The paper's mean-field rescaling (kept channels times D/n,
section 2 of the paper notes) is applied at the same place and, when pruning for real, folded
into the consumers' weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.utils.fusion
import torch_pruning as tp
from torch import nn

from gfsprune.errors import ModelError

__all__ = [
    "ChannelLayer",
    "Consumer",
    "Producer",
    "Masks",
    "find_layers",
    "fold_batchnorms",
    "prune_channels",
    "run_model",
]

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


def run_model(model: nn.Module, inputs: object) -> torch.Tensor:
    """Call ``model`` on a tensor, a tuple of positional arguments or a dict of keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


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


class Masks:
    """Channel masks (with the mean-field scale) applied at the consumers' inputs.

    Use as a context manager: hooks are installed on entry and removed on exit. Every layer
    starts at full width with scale 1. ``candidates(...)`` evaluates several channel sets of
    one layer at once: the input batch is repeated once per set and each copy is masked
    with its own set.
    """

    def __init__(self, model: nn.Module, layers: Sequence[ChannelLayer]) -> None:
        self._model = model
        self._base: dict[str, torch.Tensor] = {}
        self._batched: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for layer in layers:
            for c in layer.consumers:
                module = modules[c.name]
                size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
                param = next(module.parameters())
                self._base.setdefault(c.name, torch.ones(size, device=param.device))
        self._full = set(self._base)  # consumers whose mask is all ones: left untouched
        self._bypassed: set[str] = set()
        self._models: list[nn.Module] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Masks:
        self.attach(self._model)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unhook()
        self._models.clear()

    def attach(self, model: nn.Module) -> nn.Module:
        """Mask ``model`` too, until exit: a copy of the masked network (same module names,
        e.g. with BatchNorms folded) made under :meth:`suspended`. Returns it."""
        self._models.append(model)
        self._hook_model(model)
        return model

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The networks unmasked for a while (to copy or trace them without the hooks)."""
        self._unhook()
        try:
            yield
        finally:
            for model in self._models:
                self._hook_model(model)

    def _hook_model(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self._base:
            module = modules[name]
            self._handles.append(module.register_forward_pre_hook(self._hook(name, module)))

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str, module: nn.Module):
        linear = isinstance(module, nn.Linear)

        def hook(_mod: nn.Module, args: tuple) -> tuple | None:
            if name in self._bypassed:
                return None
            x = args[0]
            factors = self._batched.get(name)
            if factors is None:
                if name in self._full:
                    return None  # x * 1 == x
                factors = self._base[name]
                shape = [-1] if linear else [-1] + [1] * (x.dim() - 2)
                return (x * factors.view(shape), *args[1:])
            k = factors.shape[0]  # (K, I): one mask per candidate set
            if linear:
                shape = [k, 1] + [1] * (x.dim() - 2) + [-1]
            else:
                shape = [k, 1, -1] + [1] * (x.dim() - 2)
            grouped = x.unflatten(0, (k, -1))  # (K, B, ...)
            return ((grouped * factors.view(shape)).flatten(0, 1), *args[1:])

        return hook

    def set(self, layer: ChannelLayer, kept: Sequence[int], scale: float) -> None:
        """Keep only ``kept`` channels of ``layer``, each multiplied by ``scale``."""
        keep = torch.zeros(1, layer.width)
        keep[0, list(kept)] = scale
        for c in layer.consumers:
            base = self._base[c.name]
            base[c.index] = keep[0, c.root].to(base.device)
            if bool((base == 1).all()):
                self._full.add(c.name)
            else:
                self._full.discard(c.name)

    def factors(self, layer: ChannelLayer, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per consumer of ``layer``, its input factors for each row of ``keep`` (``(K,
        width)``): ``(K, inputs)``, the other layers' masks included."""
        out: dict[str, torch.Tensor] = {}
        for c in layer.consumers:
            base = out.get(c.name, self._base[c.name])
            batched = base.expand(keep.shape[0], -1).clone()
            batched[:, c.index] = keep[:, c.root].to(base.device)
            out[c.name] = batched
        return out

    @contextmanager
    def candidates(
        self, layer: ChannelLayer, keep: torch.Tensor, *, bypass: Iterable[str] = ()
    ) -> Iterator[None]:
        """Mask ``layer`` with each row of ``keep`` (``(K, width)`` factors) in one pass.
        The consumers named in ``bypass`` are left unmasked meanwhile (their outputs are
        computed from :meth:`factors` elsewhere)."""
        try:
            self._batched.update(self.factors(layer, keep))
            self._bypassed.update(bypass)
            yield
        finally:
            self._batched.clear()
            self._bypassed.clear()


def fold_batchnorms(model: nn.Module, graph: tp.DependencyGraph) -> nn.Module:
    """A copy of ``model`` (in eval mode) with each BatchNorm folded into the convolution
    before it, where that convolution feeds only the BatchNorm and the BatchNorm reads only
    that convolution (``graph`` is ``model``'s). Module names stay: a folded convolution keeps
    its name, its BatchNorm becomes an ``Identity``. The copy computes the same function up to
    float rounding, with one pass over each folded convolution's output less."""
    names = {m: n for n, m in model.named_modules()}
    pairs = []
    for norm, node in graph.module2node.items():
        source = node.inputs[0].module if len(node.inputs) == 1 else None
        if (
            isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and norm.running_mean is not None
            and type(source) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
            and source.out_channels == norm.num_features
            and len(node.inputs[0].outputs) == 1
        ):
            pairs.append((names[source], names[norm]))
    folded = copy.deepcopy(model).eval()
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        folded.set_submodule(conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm))
        folded.set_submodule(norm_name, nn.Identity())
    return folded


def _fold_scale(module: nn.Module, index: torch.Tensor, scale: float) -> None:
    """Multiply the weights that read input positions ``index`` by ``scale``."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            module.weight[:, index] *= scale
            return
        per_group_in = module.in_channels // module.groups
        per_group_out = module.out_channels // module.groups
        for i in index.tolist():
            g = i // per_group_in
            rows = slice(g * per_group_out, (g + 1) * per_group_out)
            module.weight[rows, i % per_group_in] *= scale


def prune_channels(
    model: nn.Module,
    example_inputs: object,
    kept: Mapping[str, Sequence[int]],
    *,
    scales: Mapping[str, float] | None = None,
    widths: Mapping[str, int] | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` with only the ``kept`` channels of each layer.

    Args:
        model: The network; it is not modified.
        example_inputs: Inputs for tracing.
        kept: Layer (root module) name to the channels to keep.
        scales: Layer name to the factor folded into its consumers' weights (default 1).
        widths: Layer name to its expected full width; a mismatch is refused.

    Returns:
        The pruned copy.
    """
    pruned = copy.deepcopy(model)
    graph = build_graph(pruned, example_inputs)
    layers, _ = find_layers(pruned, example_inputs, graph=graph)
    by_name = {layer.name: layer for layer in layers}
    modules = dict(pruned.named_modules())
    unknown = sorted(set(kept) - set(by_name))
    if unknown:
        raise ModelError(
            f"The plan names layers {unknown[:5]} that this model does not have as prunable "
            f"channel groups (it has {sorted(by_name)[:5]}...); was the plan made for another "
            "architecture?"
        )
    scales = scales or {}
    keep_sets = {}
    for name, keep in kept.items():
        width = by_name[name].width
        if widths is not None and widths.get(name, width) != width:
            raise ModelError(
                f"Layer '{name}' has {width} channels here but {widths[name]} in the plan; "
                "build the base model with the same constructor arguments as the original."
            )
        keep_sets[name] = sorted(set(int(i) for i in keep))
        if not keep_sets[name] or not set(keep_sets[name]) <= set(range(width)):
            raise ModelError(
                f"Layer '{name}' has {width} channels; the kept channels must be a non-empty "
                f"subset of 0..{width - 1}. Got {keep_sets[name][:10]}."
            )
    # Fold every scale first: consumer positions shift once any group is removed.
    for name, keep in keep_sets.items():
        scale = float(scales.get(name, 1.0))
        for c in by_name[name].consumers if scale != 1.0 else ():
            _fold_scale(modules[c.name], c.index[torch.isin(c.root, torch.as_tensor(keep))], scale)
    for name, keep in keep_sets.items():
        remove = sorted(set(range(by_name[name].width)) - set(keep))
        if remove:
            root = modules[name]
            handler = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, handler, remove).prune()
    return pruned
