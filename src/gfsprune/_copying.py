"""Copying a model whose modules hold tensors with autograd history as plain attributes."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also where a module caches tensors computed with gradients
    as plain attributes (timm's LeViT keeps its attention biases so after a forward pass in
    eval mode, e.g. Torch-Pruning's trace): ``deepcopy`` refuses those (only graph leaves
    can be copied); they are copied detached.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> net.cache = {"bias": net.weight * 2}  # a tensor with autograd history
        >>> copy_model(net).cache["bias"].requires_grad
        False
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            for t in _held(value):
                if t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _held(value: object) -> Iterator[torch.Tensor]:
    """The tensors in ``value`` and in the dicts, lists and tuples it nests."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _held(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _held(v)
