"""Folding BatchNorms into the convolutions before them, for faster scoring."""

from __future__ import annotations

import torch
import torch.nn.utils.fusion
import torch_pruning as tp
from torch import nn

from gfsprune._copying import copy_model

__all__ = ["batchnorm_after", "fold_batchnorms"]


_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def batchnorm_after(
    model: nn.Module, graph: tp.DependencyGraph, *, subclasses: bool = False
) -> dict[str, str]:
    """Convolution name to the BatchNorm (with running statistics) right after it, where the
    convolution feeds only that BatchNorm and the BatchNorm reads only that convolution
    (``graph`` is ``model``'s); with ``subclasses``, subclasses of the convolutions too (which
    may compute with their weights in their own way: not for folding)."""
    names = {m: n for n, m in model.named_modules()}
    pairs = {}
    for norm, node in graph.module2node.items():
        source = node.inputs[0].module if len(node.inputs) == 1 else None
        if (
            isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and norm.running_mean is not None
            and (isinstance(source, _CONVOLUTIONS) if subclasses else type(source) in _CONVOLUTIONS)
            and source.out_channels == norm.num_features
            and len(node.inputs[0].outputs) == 1
        ):
            pairs[names[source]] = names[norm]
    return pairs


def fold_batchnorms(model: nn.Module, graph: tp.DependencyGraph) -> nn.Module:
    """A copy of ``model`` (in eval mode) with each BatchNorm folded into the convolution
    before it (the pairs of :func:`batchnorm_after`). Module names stay: a folded convolution
    keeps its name, its BatchNorm becomes an ``Identity``. The copy computes the same function
    up to float rounding, with one pass over each folded convolution's output less."""
    folded = copy_model(model).eval()
    for conv_name, norm_name in batchnorm_after(model, graph).items():
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        folded.set_submodule(conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm))
        folded.set_submodule(norm_name, nn.Identity())
    return folded
