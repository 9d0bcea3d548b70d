"""Physical removal of channels through Torch-Pruning's dependency graph (attention heads
through their handler, :mod:`gfsprune.surgery.heads`).

The mean-field rescale of a layer is folded into the pruned network before the channels are
removed, so the smaller network computes what the masked one did: into the running
statistics of the BatchNorm right after a consumer whose inputs all carry the same factor
(``into="batchnorm"``), else into the consumers' weights. A BatchNorm normalises its input
in training, so a factor held in its statistics does not change fine-tuning, while a factor
in the weights before it divides their effective learning rate by about its square.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from gfsprune.errors import ConfigError, ModelError, first_line
from gfsprune.surgery.fold import batchnorm_after
from gfsprune.surgery.layers import build_graph, find_layers

__all__ = ["prune_channels"]


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


def _fold_into_batchnorm(conv: nn.Module, norm: nn.Module, scale: float) -> None:
    """Make ``norm(conv(x))`` compute what ``norm(conv(scale * x))`` did, leaving ``conv``'s
    weights alone. ``conv(scale * x) = scale * (W x + bias / scale)`` and the BatchNorm
    computes ``(z - mean) / sqrt(var + eps)``, so dividing the bias and the running mean by
    ``scale`` and ``var + eps`` by its square gives the same result. The running variance
    may come out negative where it was below ``eps * (scale**2 - 1)``; ``var + eps`` stays
    positive, and training overwrites it.
    """
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias /= scale
        norm.running_mean /= scale
        norm.running_var.copy_((norm.running_var + norm.eps) / scale**2 - norm.eps)


def prune_channels(
    model: nn.Module,
    example_inputs: object,
    kept: Mapping[str, Sequence[int]],
    *,
    scales: Mapping[str, float] | None = None,
    widths: Mapping[str, int] | None = None,
    into: str = "batchnorm",
) -> nn.Module:
    """A physically smaller copy of ``model`` with only the ``kept`` channels of each layer.

    Args:
        model: The network; it is not modified.
        example_inputs: Inputs for tracing.
        kept: Layer (root module) name to the channels to keep.
        scales: Layer name to the factor its kept channels are multiplied by (default 1).
        widths: Layer name to its expected full width; a mismatch is refused.
        into: Where the factors go: ``"batchnorm"`` (a consumer's following BatchNorm
            where every input it keeps carries the same factor, its weights elsewhere) or
            ``"weights"`` (always the consumers' weights).

    Returns:
        The pruned copy.
    """
    if into not in ("batchnorm", "weights"):
        raise ConfigError(f"'into' must be 'batchnorm' or 'weights'. Got {into!r} instead.")
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
        layer = by_name[name]
        whole = sorted(layer.channels(layer.items_of(keep_sets[name])))
        if whole != keep_sets[name]:
            raise ModelError(
                f"Layer '{name}' is kept or removed in items of {layer.item_size} channels "
                f"(heads or offsets of a grouped convolution); the kept channels "
                f"{keep_sets[name][:10]} split one. Keep whole items, e.g. "
                f"{list(layer.items[0]) if layer.items else [0]}."
            )
    # Fold every scale first: consumer positions shift once any group is removed.
    norms = batchnorm_after(pruned, graph) if into == "batchnorm" else {}
    for consumer, factors in _input_factors(by_name, keep_sets, scales, modules).items():
        kept_factors = factors[~torch.isnan(factors)]
        uniform = bool((kept_factors == kept_factors[0]).all()) if len(kept_factors) else False
        if consumer in norms and uniform:
            _fold_into_batchnorm(
                modules[consumer], modules[norms[consumer]], float(kept_factors[0])
            )
            continue
        for value in kept_factors.unique().tolist():
            if value != 1.0:
                _fold_scale(modules[consumer], (factors == value).nonzero().flatten(), value)
    for name, keep in keep_sets.items():
        layer = by_name[name]
        remove = sorted(set(range(layer.width)) - set(keep))
        if remove and layer.heads is None:
            _remove_group(graph, name, modules[name], remove)
    # Heads last: their handlers edit projections the graph was traced with.
    for name, keep in keep_sets.items():
        layer = by_name[name]
        if layer.heads is not None and len(keep) < layer.width:
            layer.heads.remove(modules[name], layer.items_of(keep))
    return pruned


def _input_factors(
    layers: Mapping[str, object],
    keep_sets: Mapping[str, list[int]],
    scales: Mapping[str, float],
    modules: Mapping[str, nn.Module],
) -> dict[str, torch.Tensor]:
    """Per consumer of a rescaled layer, the factor on each of its input positions (1 where
    no layer of the plan feeds it; NaN where the position is removed)."""
    factors: dict[str, torch.Tensor] = {}
    rescaled = {name for name in keep_sets if float(scales.get(name, 1.0)) != 1.0}
    consumers = {c.name for name in rescaled for c in layers[name].consumers}
    for name, keep in keep_sets.items():
        scale = float(scales.get(name, 1.0))
        for c in layers[name].consumers:
            if c.name not in consumers:
                continue
            module = modules[c.name]
            size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            row = factors.setdefault(c.name, torch.ones(size, dtype=torch.float64))
            kept = torch.isin(c.root, torch.as_tensor(keep))
            row[c.index[kept]] = scale
            row[c.index[~kept]] = float("nan")
    return factors


def _remove_group(graph: tp.DependencyGraph, name: str, root: nn.Module, remove: list[int]) -> None:
    """Remove the channels ``remove`` of the group rooted at ``root`` (named ``name``)."""
    handler = graph.get_pruner_of_module(root).prune_out_channels
    try:
        graph.get_pruning_group(root, handler, remove).prune()
    except Exception as err:  # Torch-Pruning's removal runs per-op code; name where it failed
        reason = first_line(err)
        raise ModelError(
            f"Torch-Pruning could not remove {len(remove)} channels of '{name}' "
            f"({type(root).__name__}): {type(err).__name__}: {reason}. Add the module to "
            "'ignore'."
        ) from err
