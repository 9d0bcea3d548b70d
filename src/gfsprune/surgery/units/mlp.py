"""Gated MLPs' hidden neurons as units (a neuron is its gate and value rows with its output
column).

A gated MLP, ``fc2(act(gate(x)) * value(x))``, has two input projections per hidden neuron,
and Torch-Pruning's groups do not always pair them: timm's ``GluMlp`` splits one ``fc1``
into halves (its groups index past ``fc2``'s inputs), and LLaMA's residual stream is more
than its tracing can map. So each such MLP is a unit layer of its own
(:class:`~gfsprune.surgery.units.base.UnitHandler`): its channels are the inputs of the
output projection, masked there, and every unit is one neuron, a unit of one channel.
timm's ``Mlp`` and ``SwiGLU`` (separate ``fc1_g`` and ``fc1_x``) and plain MLPs need no
handler: their Torch-Pruning groups are right.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gfsprune.surgery.units.base import (
    UnitHandler,
    UnitLayout,
    is_transformers,
    keep_columns,
    keep_rows,
    linears_reason,
)

__all__ = ["MLP_HANDLERS", "GatedMLP", "TimmGluMlp"]


class GatedMLP(UnitHandler):
    """transformers' gated MLP, ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (LLaMA,
    Mistral, Qwen2/3): neuron ``j`` is row ``j`` of ``gate_proj`` and ``up_proj`` with
    column ``j`` of ``down_proj``."""

    unit = "neurons"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        names = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
        return is_transformers(module, names)

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        reason = linears_reason(module, ("gate_proj", "up_proj", "down_proj"))
        if reason:
            return reason
        neurons = tuple(range(module.down_proj.in_features))
        producers = ((f"{name}.gate_proj", neurons), (f"{name}.up_proj", neurons))
        return UnitLayout(len(neurons), 1, f"{name}.down_proj", producers)

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        keep_rows(module.gate_proj, list(kept))
        keep_rows(module.up_proj, list(kept))
        keep_columns(module.down_proj, list(kept))
        module.intermediate_size = len(kept)


class TimmGluMlp(UnitHandler):
    """timm's ``GluMlp`` (and ``SwiGLUPacked``): ``fc1``'s output halves are the value and
    the gate (in the order ``gate_last`` says), so neuron ``j`` is rows ``j`` and
    ``hidden + j`` of ``fc1`` with column ``j`` of ``fc2``. A ``norm`` across the neurons
    (not an ``Identity``) cannot be masked exactly, nor can the 1x1-convolution variant."""

    unit = "neurons"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        kind = type(module)  # by name: timm is an optional dependency
        return kind.__name__ == "GluMlp" and kind.__module__.startswith("timm.")

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        reason = linears_reason(module, ("fc1", "fc2"))
        if reason:
            return reason
        if not isinstance(module.norm, nn.Identity):
            return f"{type(module.norm).__name__} across the hidden neurons before fc2"
        neurons = tuple(range(module.fc2.in_features))
        return UnitLayout(len(neurons), 1, f"{name}.fc2", ((f"{name}.fc1", neurons * 2),))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        hidden = module.fc2.in_features
        keep_rows(module.fc1, [half * hidden + j for half in range(2) for j in kept])
        keep_columns(module.fc2, list(kept))


#: The MLP handlers, tried after the attention ones by :func:`~gfsprune.surgery.units.find_units`.
MLP_HANDLERS: tuple[type[UnitHandler], ...] = (GatedMLP, TimmGluMlp)
