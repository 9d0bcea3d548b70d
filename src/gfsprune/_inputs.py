"""Helpers over a model's inputs (a tensor, or dicts/tuples/lists of them) and its device."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from gfsprune.errors import DataError


def map_tensors(obj: object, fn: Callable[[torch.Tensor], torch.Tensor]) -> object:
    """``obj`` with ``fn`` applied to every tensor, the nesting and container types kept (a
    dict subclass too, e.g. transformers' ``ModelOutput``, which modules index by position)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if type(obj) is dict:
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, dict):
        mapped = copy.copy(obj)
        for k, v in obj.items():
            mapped[k] = map_tensors(v, fn)
        return mapped
    if isinstance(obj, tuple | list):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in ``obj``, depth first."""
    found: list[torch.Tensor] = []
    map_tensors(obj, lambda t: found.append(t) or t)
    return found


def move(obj: object, device: torch.device) -> object:
    """``obj`` (a tensor, or a dict/tuple/list of them) on ``device``."""
    return map_tensors(obj, lambda t: t.to(device))


def run_model(model: nn.Module, inputs: object) -> torch.Tensor:
    """Call ``model`` on a tensor, a tuple of positional arguments or a dict of keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def run_hooked(
    model: nn.Module,
    inputs: object,
    *,
    before: Callable[[nn.Module, tuple], None] | None = None,
    after: Callable[[nn.Module, tuple, object], None] | None = None,
) -> object:
    """``run_model`` without gradients, ``before(module, args)`` and ``after(module, args,
    output)`` called around every module's forward (the hooks removed again, also on error)."""
    hooks = []
    for m in model.modules():
        if before is not None:
            hooks.append(m.register_forward_pre_hook(before))
        if after is not None:
            hooks.append(m.register_forward_hook(after))
    try:
        with torch.no_grad():
            return run_model(model, inputs)
    finally:
        for h in hooks:
            h.remove()


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any); what
    ``device=None`` means wherever gfsprune takes a model."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_inputs(batch: object, *, labelled: bool) -> object:
    """The model's inputs in one mini-batch: ``batch`` itself, or its first element when
    ``labelled`` (an ``(inputs, labels)`` pair whose labels are not needed)."""
    if not labelled:
        return batch
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        size = f" of length {len(batch)}" if isinstance(batch, tuple | list) else ""
        raise DataError(
            f"labelled=True needs (inputs, labels) mini-batches; got a {type(batch).__name__}"
            f"{size}. Pass labelled=False where every batch holds only the model's inputs."
        )
    return batch[0]
