"""Physical removal of channels: every member module of a layer cut by Torch-Pruning's own
pruning functions (attention heads and gated MLPs' neurons through their unit handler,
:mod:`gfsprune.surgery.units`).

Each module is cut once, at the positions its group found on the unpruned model: no
dependency graph is traced on the copy and no group is re-mapped after another was removed
(Torch-Pruning's ``Group.prune`` re-maps every later group through concatenations and splits
whose sizes the earlier removals changed).

The mean-field rescale of a layer is folded into the pruned network before the channels are
removed, so the smaller network computes what the masked one did: into the running
statistics of the BatchNorm right after a consumer whose kept inputs all carry the same
factor (where the caller gives those pairs, :func:`~gfsprune.surgery.fold.batchnorm_after`),
else into the consumers' weights. A BatchNorm normalises its input in training, so a factor
held in its statistics does not change fine-tuning, while a factor in the weights before it
divides their effective learning rate by about its square.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from gfsprune._copying import copy_model
from gfsprune.errors import ModelError, first_line
from gfsprune.surgery.layers import ChannelLayer, find_layers

__all__ = ["prune_channels", "remove_channels"]


def _fold_scale(module: nn.Module, index: torch.Tensor, scale: float) -> None:
    """Multiply the weights that read input positions ``index`` by ``scale``, into a new
    parameter (the old one may be shared with the model a trial cut is undone to)."""
    with torch.no_grad():
        weight = module.weight.detach().clone()
        if isinstance(module, nn.Linear):
            weight[:, index] *= scale
        else:  # (out, in / groups, *kernel): group g's rows read its inputs only
            groups = module.groups
            factors = torch.ones(groups, module.in_channels // groups, device=weight.device)
            factors.view(-1)[index.to(weight.device)] = scale
            factors = factors.repeat_interleave(module.out_channels // groups, dim=0)
            weight *= factors.view(*factors.shape, *[1] * (weight.dim() - 2)).to(weight.dtype)
    module.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)


def _fold_into_batchnorm(conv: nn.Module, norm: nn.Module, scale: float) -> None:
    """Make ``norm(conv(x))`` compute what ``norm(conv(scale * x))`` did, leaving ``conv``'s
    weights alone. ``conv(scale * x) = scale * (W x + bias / scale)`` and the BatchNorm
    computes ``(z - mean) / sqrt(var + eps)``, so dividing the bias and the running mean by
    ``scale`` and ``var + eps`` by its square gives the same result. The running variance
    may come out negative where it was below ``eps * (scale**2 - 1)``; ``var + eps`` stays
    positive, and training overwrites it. New tensors replace the old ones (which a trial
    cut may share with the model it restores)."""
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias / scale, requires_grad=conv.bias.requires_grad)
        norm.running_mean = norm.running_mean / scale
        norm.running_var = (norm.running_var + norm.eps) / scale**2 - norm.eps


def _input_factors(
    layers: Mapping[str, ChannelLayer],
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


def prune_channels(
    model: nn.Module,
    example_inputs: object,
    kept: Mapping[str, Sequence[int]],
    *,
    scales: Mapping[str, float] | None = None,
    widths: Mapping[str, int] | None = None,
    layers: Sequence[ChannelLayer] | None = None,
    norms: Mapping[str, str] | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` with only the ``kept`` channels of each layer.

    Args:
        model: The network; it is not modified.
        example_inputs: Inputs for tracing.
        kept: Layer (root module) name to the channels to keep.
        scales: Layer name to the factor its kept channels are multiplied by (default 1).
        widths: Layer name to its expected full width; a mismatch is refused.
        layers: ``model``'s channel layers, when the caller has them (``find_layers``);
            found here otherwise.
        norms: Convolution name to the BatchNorm right after it
            (:func:`~gfsprune.surgery.fold.batchnorm_after`): a consumer there whose kept
            inputs share one factor has it folded into that BatchNorm's statistics; every
            other factor goes into the consumers' weights (also for all, without ``norms``).

    Returns:
        The pruned copy.
    """
    pruned = copy_model(model)
    if layers is None:
        layers, _ = find_layers(pruned, example_inputs)
    remove_channels(pruned, layers, kept, scales=scales, widths=widths, norms=norms)
    return pruned


def remove_channels(
    model: nn.Module,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    *,
    scales: Mapping[str, float] | None = None,
    widths: Mapping[str, int] | None = None,
    norms: Mapping[str, str] | None = None,
) -> None:
    """:func:`prune_channels` in place, with ``model``'s channel layers given. Every module
    it cuts gets new parameters and buffers (none is changed in place)."""
    by_name = {layer.name: layer for layer in layers}
    modules = dict(model.named_modules())
    unknown = sorted(set(kept) - set(by_name))
    if unknown:
        raise ModelError(
            f"The plan names layers {unknown[:5]} that this model does not have as prunable "
            f"channel groups (it has {sorted(by_name)[:5]}...); was the plan made for another "
            "architecture?"
        )
    scales = scales or {}
    keep_sets = {name: _checked(by_name[name], keep, widths) for name, keep in kept.items()}
    # Fold every scale first, at the positions found on the unpruned model.
    norms = norms or {}
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
    # (module, function, dim): (the first layer cutting it, positions); one cut per module
    cuts: dict[tuple[str, object, int], tuple[str, set[int]]] = {}
    for name, keep in keep_sets.items():
        layer = by_name[name]
        gone = torch.as_tensor(sorted(set(range(layer.width)) - set(keep)), dtype=torch.long)
        if len(gone) and layer.units is None:
            for m in layer.members:
                positions = m.index[torch.isin(m.root, gone)].tolist()
                cuts.setdefault((m.name, m.prune, m.dim), (name, set()))[1].update(positions)
    for (module_name, prune, dim), (name, positions) in cuts.items():
        _cut(name, modules[module_name], prune, dim, sorted(positions))
    # Units: their handlers cut the unit rows and columns of the projections.
    for name, keep in keep_sets.items():
        layer = by_name[name]
        if layer.units is not None and len(keep) < layer.width:
            layer.units.remove(modules[name], layer.items_of(keep))


def _checked(layer: ChannelLayer, keep: Sequence[int], widths: Mapping[str, int] | None) -> list:
    """``keep`` as a sorted list, refused unless it is whole items of ``layer`` (and the
    layer has the width ``widths`` gives it)."""
    name, width = layer.name, layer.width
    if widths is not None and widths.get(name, width) != width:
        raise ModelError(
            f"Layer '{name}' has {width} channels here but {widths[name]} in the plan; "
            "build the base model with the same constructor arguments as the original."
        )
    keep = sorted(set(int(i) for i in keep))
    if not keep or not set(keep) <= set(range(width)):
        raise ModelError(
            f"Layer '{name}' has {width} channels; the kept channels must be a non-empty "
            f"subset of 0..{width - 1}. Got {keep[:10]}."
        )
    if sorted(layer.channels(layer.items_of(keep))) != keep:
        raise ModelError(
            f"Layer '{name}' is kept or removed in items of {layer.item_size} channels "
            f"(heads or offsets of a grouped convolution); the kept channels "
            f"{keep[:10]} split one. Keep whole items, e.g. "
            f"{list(layer.items[0]) if layer.items else [0]}."
        )
    return keep


# Torch-Pruning's own module types: it cuts all their parameters.
_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _cut(layer: str, module: nn.Module, prune, dim: int, positions: list[int]) -> None:
    """Cut ``positions`` of ``module`` (a member of layer ``layer``) with Torch-Pruning's
    function ``prune``, its pruner's dimension set first as Torch-Pruning's own call does.

    Torch-Pruning cuts a convolution's or linear layer's ``weight`` and ``bias``; the other
    parameters of a subclass that hold one entry per output channel (the ``gain`` of timm's
    ``ScaledStdConv2d``, NF-RegNet) are cut with them."""
    extra = {}
    plain = type(module) in _PLAIN or getattr(module, "transposed", False)
    if "out_channels" in prune.__name__ and not plain:
        size = module.weight.shape[0]
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        extra = {n: t for n, t in own if n not in ("weight", "bias") and t.shape[:1] == (size,)}
    prune.__self__.pruning_dim = dim
    try:
        prune(module, positions)
        gone = set(positions)
        keep = [i for i in range(size) if i not in gone] if extra else []
        for name, tensor in extra.items():
            cut = tensor.detach()[torch.as_tensor(keep, device=tensor.device)].clone()
            if isinstance(tensor, nn.Parameter):
                cut = nn.Parameter(cut, requires_grad=tensor.requires_grad)
            setattr(module, name, cut)
    except Exception as err:  # Torch-Pruning's per-module code; name where it failed
        raise ModelError(
            f"Torch-Pruning could not remove {len(positions)} channels of layer '{layer}' from "
            f"its member {type(module).__name__} ({prune.__name__}): {type(err).__name__}: "
            f"{first_line(err)}. Add the module to 'ignore'."
        ) from err
