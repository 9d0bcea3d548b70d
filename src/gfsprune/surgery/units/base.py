"""The unit-handler protocol: a module whose channels are selected in whole units.

A *unit layer* is one module (an attention block, a gated MLP) whose channels are the inputs
of its output projection, selected in units of ``size`` channels: an attention head (or a
grouped-query group of heads), or an MLP hidden neuron (a unit of one channel). Masking a
unit's inputs of the output projection is exactly removing the unit; removal takes the unit
out of every projection and updates the module's own counts. Torch-Pruning's groups through
these projections are not used.

A handler is one class behind :class:`UnitHandler`: :mod:`~gfsprune.surgery.units.attention`
holds the attention handlers, :mod:`~gfsprune.surgery.units.mlp` the gated-MLP ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

__all__ = [
    "UnitHandler",
    "UnitLayout",
    "is_transformers",
    "keep_columns",
    "keep_rows",
    "linears_reason",
]


@dataclass(frozen=True)
class UnitLayout:
    """Where one module's units live.

    Attributes:
        count: Number of units (heads, key/value groups or neurons).
        size: Channels per unit.
        consumer: Qualified name of the output projection (a ``Linear`` reading the units).
        producers: Qualified names of the modules whose outputs carry unit channels, each with
            the unit channel of every output (e.g. ``qkv``: the channels three times).
    """

    count: int
    size: int
    consumer: str
    producers: tuple[tuple[str, tuple[int, ...]], ...]


class UnitHandler(ABC):
    """Finds and removes the units of one module type.

    Attributes:
        unit: What a unit is, in messages: ``"heads"`` or ``"neurons"``.
    """

    unit: ClassVar[str]

    @staticmethod
    @abstractmethod
    def matches(module: nn.Module) -> bool:
        """Whether ``module`` is of this handler's type."""

    @staticmethod
    @abstractmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        """The units of ``module`` (named ``name``), or why they cannot be pruned exactly."""

    @staticmethod
    @abstractmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        """Keep only the units ``kept`` (ascending) of ``module``, in place."""


def _select(param: torch.Tensor, index: list[int], dim: int) -> nn.Parameter:
    """A new parameter with ``param``'s entries at ``index`` along ``dim``."""
    picked = param.detach().index_select(dim, torch.as_tensor(index, device=param.device))
    return nn.Parameter(picked.contiguous(), requires_grad=param.requires_grad)


def keep_rows(linear: nn.Linear, rows: list[int]) -> None:
    """Keep only the output rows ``rows`` of ``linear`` (and of its bias), in place."""
    linear.weight = _select(linear.weight, rows, 0)
    if linear.bias is not None:
        linear.bias = _select(linear.bias, rows, 0)
    linear.out_features = len(rows)


def keep_columns(linear: nn.Linear, columns: list[int]) -> None:
    """Keep only the input columns ``columns`` of ``linear``, in place."""
    linear.weight = _select(linear.weight, columns, 1)
    linear.in_features = len(columns)


def is_transformers(module: nn.Module, names: frozenset[str]) -> bool:
    """Whether ``module`` is a transformers module of one of the classes ``names``."""
    return type(module).__name__ in names and type(module).__module__.startswith("transformers.")


def linears_reason(module: nn.Module, names: Sequence[str]) -> str | None:
    """Why ``module``'s children ``names`` are not all ``nn.Linear`` (``None``: they are)."""
    for name in names:
        child = getattr(module, name, None)
        if not isinstance(child, nn.Linear):
            kind = "missing" if child is None else f"a {type(child).__name__}, not nn.Linear"
            return f"'{name}' is {kind}"
    return None
