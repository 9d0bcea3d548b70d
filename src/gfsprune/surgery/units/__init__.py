"""Modules selected in whole units: attention heads and gated MLPs' hidden neurons.

Each module type has one handler behind :class:`~gfsprune.surgery.units.base.UnitHandler`
(:mod:`~gfsprune.surgery.units.attention`: timm's and transformers' attention;
:mod:`~gfsprune.surgery.units.mlp`: gated MLPs); :data:`HANDLERS` lists them in the order
:func:`find_units` tries them. A new module type is one handler class added there.
"""

from __future__ import annotations

from torch import nn

from gfsprune.surgery.units.attention import ATTENTION_HANDLERS
from gfsprune.surgery.units.base import UnitHandler, UnitLayout
from gfsprune.surgery.units.mlp import MLP_HANDLERS

__all__ = ["HANDLERS", "UnitHandler", "UnitLayout", "find_units"]

#: The handlers :func:`find_units` tries, in order: attention heads, then gated MLPs.
HANDLERS: tuple[type[UnitHandler], ...] = (*ATTENTION_HANDLERS, *MLP_HANDLERS)


def find_units(
    model: nn.Module,
) -> tuple[dict[str, tuple[type[UnitHandler], UnitLayout]], dict[str, str]]:
    """The modules of ``model`` whose units can be pruned (name to handler and layout), and
    those of a known type that cannot (name to the reason)."""
    found: dict[str, tuple[type[UnitHandler], UnitLayout]] = {}
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        handler = next((h for h in HANDLERS if h.matches(module)), None)
        if handler is None:
            continue
        layout = handler.layout(module, name)
        if isinstance(layout, str):
            refused[name] = f"{type(module).__name__} {handler.unit}: {layout}"
        else:
            found[name] = handler, layout
    return found, refused
