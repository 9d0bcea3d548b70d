"""Torch-Pruning's dependency graph of a model: traced, corrected, and split into groups.

Torch-Pruning (DepGraph) records every module and op one forward pass runs and, per group
root (a convolution or linear layer), the coupled channels of every other module: a *group*.
Three of its habits are corrected here, one guarded against:

- **Split parts.** Torch-Pruning numbers a split's outputs in the order its backward walk
  meets their consumers, not in the order the split returns them, so ``a, b = x.split(...)``
  used as ``cat([conv(a), b])`` maps the channels of ``a`` onto ``b`` (timm's FasterNet, CSPNet
  and DPN crashed or mis-pruned on it). Autograd records, on every edge, which output of the
  split it carries (``next_functions``); :func:`build_graph` sets each edge's index mapping from
  that, and the part sizes the concatenations after it use.
- **Concatenation sizes.** Torch-Pruning infers the size of each input of a concatenation
  from the modules around it, and fails for the whole model where it cannot (``sum`` over a
  ``None``: torchvision's Swin-S/B, timm's CoaT and CSPDarkNet-Focus were "untraceable");
  :func:`build_graph` records the real sizes while it traces and sets them.
- **Diverging groups.** Through reshapes it misreads (a channels-last window partition in
  Swin: it takes dimension 1 for the channels), the index sets of a group can grow without
  end (one Swin group took longer than 10 minutes and all memory). :func:`dependency_groups`
  charges every index mapping to a budget and reports the group as diverging past it.
- **One group at a time.** A group Torch-Pruning cannot map (a ``ZeroDivisionError`` inside
  an index mapping) is reported with the op it failed at; the other groups are still found.
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping

from gfsprune.errors import ModelError, first_line

__all__ = ["build_graph", "dependency_groups"]

# A group diverges where one index mapping yields more positions than the widest tensor of
# the model has channels (Conv/Linear/norm widths: a flatten into a linear layer included),
# or all its mappings together more than _SPENT times that. Sane groups seen: VGG-16 at
# 224x224 maps 1.9M positions (25088-wide flatten), densenet201 89k; diverging ones in
# Swin and HaloNet produced lists of 2M positions in one call.
_SPENT = 100
# Torch-Pruning recomputes every index mapping at the start of each group (0.4 s on Swin-T,
# most of the time finding its groups): these op types are hidden from that update while
# the groups are traced, the mappings computed once when the graph was built kept.
_MAPPED_OPS = (
    ops.OPTYPE.CONCAT,
    ops.OPTYPE.SPLIT,
    ops.OPTYPE.RESHAPE,
    ops.OPTYPE.UNBIND,
    ops.OPTYPE.EXPAND,
    ops.OPTYPE.SLICE,
)


def build_graph(model: nn.Module, example_inputs: object) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``: tracing failures made readable, split
    parts mapped by the output each edge carries, concatenations by their real sizes."""
    graph, sizes = tp.DependencyGraph(), _ConcatSizes()
    try:
        with torch.enable_grad(), sizes, warnings.catch_warnings():
            # Parameters of modules it does not know (an LSTM's): the layers feeding them
            # are skipped with a reason (find_layers), so its warning says nothing more.
            warnings.filterwarnings("ignore", "Unwrapped parameters detected", UserWarning)
            graph.build_dependency(model, example_inputs=example_inputs)  # through autograd
    except Exception as err:  # tracing runs arbitrary user code; any failure means untraceable
        if not _in_index_mapping(err):
            raise _untraceable(model, err) from err
    mapped = [node for node in graph.module2node.values() if _map_split_parts(node)]
    for node in graph.module2node.values():
        if node.type == ops.OPTYPE.CONCAT:
            node.module.concat_sizes = sizes.of(node, graph)
    _update_mappings(graph)
    _guard(graph, backwards={d for node in mapped for d in _into_concats(node)})
    return graph


def _update_mappings(graph: tp.DependencyGraph) -> None:
    """Torch-Pruning's index mappings of every op, node by node: a node whose mapping it
    fails to compute (a ``ZeroDivisionError`` on torchvision ShuffleNetV2's channel shuffle,
    where it infers 0 channels) keeps none, so the groups through it are wrong in ways the
    checks of :mod:`gfsprune.surgery.layers` and :mod:`gfsprune.surgery.probe` catch, instead
    of the whole model being untraceable. (Torch-Pruning's own update stops at the first.)"""
    update = {
        ops.OPTYPE.CONCAT: tp_index_mapping.update_concat_index_mapping,
        ops.OPTYPE.SPLIT: tp_index_mapping.update_split_index_mapping,
        ops.OPTYPE.RESHAPE: tp_index_mapping.update_reshape_index_mapping,
        ops.OPTYPE.UNBIND: tp_index_mapping.update_unbind_index_mapping,
        ops.OPTYPE.EXPAND: tp_index_mapping.update_expand_index_mapping,
        ops.OPTYPE.SLICE: tp_index_mapping.update_slice_index_mapping,
    }
    for node in graph.module2node.values():
        if node.type in update:
            try:
                update[node.type](graph, node)
            except Exception:  # noqa: BLE001 - Torch-Pruning's inference on this op failed
                pass


def _untraceable(model: nn.Module, err: Exception) -> ModelError:
    return ModelError(
        f"Torch-Pruning could not trace {type(model).__name__} ({type(err).__name__}: "
        f"{first_line(err)}); check that example_inputs match the model's forward() and "
        "that the model has no data-dependent control flow."
    )


def _in_index_mapping(err: Exception) -> bool:
    """Whether ``err`` was raised by Torch-Pruning's last step of building its graph,
    computing the index mappings (e.g. ``sum`` over a concatenation's sizes it could not
    infer, a TypeError), which :func:`build_graph` redoes with the real sizes, op by op."""
    frames = traceback.extract_tb(err.__traceback__)
    return any(f.name == "update_index_mapping" for f in frames)


class _ConcatSizes(TorchFunctionMode):
    """The real sizes of every concatenation's inputs, recorded while Torch-Pruning traces:
    it infers them from the modules around, and gives up (or fails) past ops it does not
    know (Swin's and CoaT's concatenations of reshaped tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[object, list[tuple[int, bool]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("cat", "concat", "concatenate") and getattr(out, "grad_fn", None) is not None:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            self._sizes[out.grad_fn] = [
                (int(t.shape[dim]), t.requires_grad) for t in tensors if t.dim() > 0
            ]
        return out

    def of(self, node: tp.Node, graph: tp.DependencyGraph) -> list[int] | None:
        """The sizes of ``node``'s inputs in Torch-Pruning's order (the inputs that carry
        gradients), or ``None`` where they cannot be matched."""
        recorded = self._sizes.get(node.grad_fn)
        if recorded is None:
            return None
        sizes = [size for size, grad in recorded if grad]
        return sizes if len(sizes) == len(node.inputs) else None


def _into_concats(split: tp.Node) -> list[tp.Dependency]:
    """The dependencies from a concatenation back into ``split`` (one of its inputs)."""
    return [
        dep
        for out in split.outputs
        if out.type == ops.OPTYPE.CONCAT
        for dep in out.dependencies
        if dep.target is split
    ]


def _split_sizes(node: tp.Node) -> list[int] | None:
    """The sizes of every part a split (on the channel dimension) returns, in order."""
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_split_sizes", None)
    if sizes is not None:
        return [int(s) for s in sizes]
    size, shape = (
        getattr(grad_fn, "_saved_split_size", None),
        getattr(grad_fn, "_saved_self_sym_sizes", None),
    )
    if size is None or shape is None or len(shape) < 2:
        return None
    dim = int(getattr(grad_fn, "_saved_dim", 1))
    dim = dim if 0 <= dim < len(shape) else 1  # Torch-Pruning maps splits on dimension 1
    total, size = int(shape[dim]), int(size)
    return [min(size, total - start) for start in range(0, total, size)]


def _map_split_parts(node: tp.Node) -> bool:
    """Give every edge out of a split node the index mapping of the part it carries (and each
    output position its part's size); whether the node was changed. Splits Torch-Pruning does
    not map (other dimensions, or disabled for a position embedding) are left alone."""
    if (
        node.type != ops.OPTYPE.SPLIT
        or node.module.offsets is None
        or not node.enable_index_mapping
    ):
        return False
    sizes = _split_sizes(node)
    if sizes is None:
        return False
    offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    # The part each edge carries, per consumer in the order of its inputs (Torch-Pruning adds
    # an edge per entry of the consumer's next_functions, in that order, on both sides).
    parts: dict[tp.Node, list[int]] = {}
    for out in dict.fromkeys(node.outputs):
        fns = getattr(out.grad_fn, "next_functions", ())
        parts[out] = [k for fn, k in fns if fn is node.grad_fn]
        if len(parts[out]) != node.outputs.count(out) or out.inputs.count(node) != len(parts[out]):
            return False  # a module called more than once: the edges cannot be told apart
    edges, seen = [], dict.fromkeys(parts, 0)  # the part of each output edge, in order
    for out in node.outputs:
        edges.append(parts[out][seen[out]])
        seen[out] += 1
    if not all(0 <= k < len(sizes) for k in edges):
        return False  # not the split Torch-Pruning took it for
    for k, dep in zip(edges, node.dependencies[len(node.inputs) :], strict=True):
        dep.index_mapping[0] = tp_index_mapping._SplitIndexMapping(offsets[k : k + 2], False)
    for out, ks in parts.items():
        back = [d for d in out.dependencies[: len(out.inputs)] if d.target is node]
        for k, dep in zip(ks, back, strict=True):
            dep.index_mapping[0] = tp_index_mapping._SplitIndexMapping(offsets[k : k + 2], True)
    # Torch-Pruning looks part sizes up by output position (concatenations after the split).
    node.module.split_sizes = [sizes[k] for k in edges]
    node.enable_index_mapping = False  # keep these mappings when Torch-Pruning updates its own
    return True


class _Diverged(Exception):
    """A group's index sets grew past the budget."""


@dataclass
class _Budget:
    """What the group being traced may still spend (index entries), the dependency it mapped
    last, and the modules whose outputs it reached (the group's own, were it complete)."""

    is_out: Callable[[Callable], bool]
    widest: int
    left: int = 0
    last: tp.Dependency | None = None
    reached: set[nn.Module] = field(default_factory=set)
    active: bool = False  # only while dependency_groups traces a group

    def reset(self) -> None:
        self.left, self.last, self.reached = _SPENT * self.widest, None, set()

    def visit(self, dep: tp.Dependency) -> None:
        if not self.active:
            return
        self.last = dep
        if isinstance(dep.target.module, nn.Module) and self.is_out(dep.handler):
            self.reached.add(dep.target.module)

    def charge(self, mapped: Sized) -> Sized:
        self.left -= len(mapped) + 1
        if self.active and (self.left < 0 or len(mapped) > self.widest):
            raise _Diverged
        return mapped


class _Mappings(list):
    """A dependency's two index mappings (Torch-Pruning assigns them in place and reads them
    for every dependency it follows): each read is a visit, each mapping call is charged.

    ``backwards``: applied second first. Torch-Pruning applies a dependency's split mapping
    (slot 0) before its concatenation mapping (slot 1), right from a split into a
    concatenation but wrong on the way back, where the concatenation's part must be cut out
    first (else channels of one part map onto the other)."""

    def __init__(
        self, mappings: list, dep: tp.Dependency, budget: _Budget, *, backwards: bool
    ) -> None:
        super().__init__(mappings)
        self._dep, self._budget, self._backwards = dep, budget, backwards

    def __iter__(self) -> Iterator[Callable | None]:
        self._budget.visit(self._dep)
        mappings = list(super().__iter__())
        for mapping in reversed(mappings) if self._backwards else mappings:
            yield None if mapping is None else self._charged(mapping)

    def _charged(self, mapping: Callable) -> Callable:
        def call(idxs: list) -> list:
            # A flatten mapping multiplies the indices by its stride: charged before it runs
            # (one call of a diverging Swin group made tens of millions).
            stride = getattr(mapping, "_stride", 1)
            if not getattr(mapping, "reverse", True):
                self._budget.charge(range(len(idxs) * stride))
            return self._budget.charge(mapping(idxs))

        return call


def _guard(graph: tp.DependencyGraph, *, backwards: set[tp.Dependency] = frozenset()) -> _Budget:
    """The budget every index mapping of ``graph`` is charged to (set up on first call)."""
    for node in graph.module2node.values():
        for dep in node.dependencies:
            if isinstance(dep.index_mapping, _Mappings):
                return dep.index_mapping._budget
    budget = _Budget(graph.is_out_channel_pruning_fn, _widest(graph.model))
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _Mappings(
                dep.index_mapping, dep, budget, backwards=dep in backwards
            )
    return budget


def _widest(model: nn.Module) -> int:
    """The most channels (or features) any Conv, Linear or norm layer of ``model`` has."""
    widths = [1]
    for m in model.modules():
        for name in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            if isinstance(getattr(m, name, None), int):
                widths.append(getattr(m, name))
        if isinstance(m, nn.LayerNorm):
            widths.append(math.prod(m.normalized_shape))
    return max(widths)


def dependency_groups(
    graph: tp.DependencyGraph, ignored: list[nn.Module]
) -> Iterator[tuple[nn.Module, tp.Group | str]]:
    """Torch-Pruning's groups, one per root convolution or linear layer not yet covered, as
    ``get_all_groups`` finds them; a root whose group cannot be traced comes with the reason
    instead, naming the op. Groups through an ``ignored`` module's outputs are left out."""
    budget = _guard(graph)
    ignored = ignored + graph.IGNORED_LAYERS_IN_TRACING
    mapped = [(node, node.type) for node in graph.module2node.values() if node.type in _MAPPED_OPS]
    try:
        for node, _ in mapped:
            node.type = ops.OPTYPE.ELEMENTWISE
        yield from _groups(graph, ignored, budget)
    finally:
        for node, kind in mapped:
            node.type = kind


def _groups(
    graph: tp.DependencyGraph, ignored: list[nn.Module], budget: _Budget
) -> Iterator[tuple[nn.Module, tp.Group | str]]:
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if not isinstance(module, ops.TORCH_CONV | ops.TORCH_LINEAR) or module in visited:
            continue
        if any(module is m for m in ignored):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        budget.reset()
        budget.active = True
        try:
            group = graph.get_pruning_group(
                module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module)))
            )
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's per-op index mappings
            group = _failure(err, budget)
        finally:
            budget.active = False
        if isinstance(group, str):
            visited.update(budget.reached)
            yield module, group
            continue
        outs = [
            item.dep.target.module
            for item in group
            if graph.is_out_channel_pruning_fn(item.dep.handler)
        ]
        visited.update(m for m in outs if isinstance(m, nn.Module))
        if not any(m is i for m in outs for i in ignored):
            yield module, group


def _failure(err: Exception, budget: _Budget) -> str:
    """Why a group could not be traced, naming the op Torch-Pruning was mapping through."""
    op = "" if budget.last is None else f" at {budget.last.target.name}"
    if isinstance(err, _Diverged):
        return f"Torch-Pruning's channel mapping diverges{op} (a reshape it misreads)"
    return f"Torch-Pruning cannot map its channels{op} ({type(err).__name__}: {first_line(err)})"
