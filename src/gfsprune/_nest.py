"""Helpers over nested inputs: a tensor, or dicts/tuples/lists of them."""

from __future__ import annotations

from collections.abc import Callable

import torch


def map_tensors(obj: object, fn: Callable[[torch.Tensor], torch.Tensor]) -> object:
    """``obj`` with ``fn`` applied to every tensor, the nesting kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in ``obj``, depth first."""
    found: list[torch.Tensor] = []
    map_tensors(obj, lambda t: found.append(t) or t)
    return found
