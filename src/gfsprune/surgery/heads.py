"""Attention heads as selection items: one small handler per attention module type.

A head layer's channels are the inputs of the attention's output projection (``num_heads x
head_dim``, head ``h`` owning ``h * head_dim ... (h + 1) * head_dim - 1``); its items are the
heads. Masking a head's inputs of the output projection is exactly removing the head: its
queries, keys and values reach the output only through those inputs, and softmax runs within
each head. Removal takes the head's query, key and value rows out of the input projection and
its columns out of the output projection, and lowers ``num_heads``; ``head_dim`` and the
softmax scale stay. Torch-Pruning's own groups through these projections are not used.

A handler is one class behind :class:`AttentionHeads`; :data:`ATTENTION_TYPES` lists them.
Attention modules of other types are left to the channel rules, which skip their query and
key channels (they reach no Conv or Linear layer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ATTENTION_TYPES", "AttentionHeads", "HeadLayout", "TimmAttention", "find_heads"]


@dataclass(frozen=True)
class HeadLayout:
    """Where one attention module's heads live.

    Attributes:
        num_heads: Number of heads.
        head_dim: Channels per head.
        consumer: Qualified name of the output projection (a ``Linear`` reading the heads).
        producers: Qualified names of the modules whose outputs carry head channels, each with
            the head channel of every output (e.g. ``qkv``: the channels three times).
    """

    num_heads: int
    head_dim: int
    consumer: str
    producers: tuple[tuple[str, tuple[int, ...]], ...]


class AttentionHeads(ABC):
    """Finds and removes the heads of one attention module type."""

    @staticmethod
    @abstractmethod
    def matches(module: nn.Module) -> bool:
        """Whether ``module`` is of this handler's type."""

    @staticmethod
    @abstractmethod
    def layout(module: nn.Module, name: str) -> HeadLayout | str:
        """The heads of ``module`` (named ``name``), or why they cannot be pruned exactly."""

    @staticmethod
    @abstractmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        """Keep only the heads ``kept`` (ascending) of ``module``, in place."""


def _select(param: torch.Tensor, index: list[int], dim: int) -> nn.Parameter:
    """A new parameter with ``param``'s entries at ``index`` along ``dim``."""
    picked = param.detach().index_select(dim, torch.as_tensor(index, device=param.device))
    return nn.Parameter(picked.contiguous(), requires_grad=param.requires_grad)


def _keep_rows(linear: nn.Linear, rows: list[int]) -> None:
    linear.weight = _select(linear.weight, rows, 0)
    if linear.bias is not None:
        linear.bias = _select(linear.bias, rows, 0)
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: list[int]) -> None:
    linear.weight = _select(linear.weight, columns, 1)
    linear.in_features = len(columns)


class TimmAttention(AttentionHeads):
    """timm's ``Attention`` (ViT, DeiT, ...): a fused ``qkv`` linear layer (rows q, k, v,
    each ``num_heads x head_dim``), an optional sigmoid ``gate`` per channel, ``proj``.
    A ``scale_norm`` (a norm across all heads before ``proj``) cannot be masked exactly."""

    @staticmethod
    def matches(module: nn.Module) -> bool:
        try:
            from timm.layers.attention import Attention
        except ImportError:  # timm is an optional dependency
            return False
        return type(module) is Attention

    @staticmethod
    def layout(module: nn.Module, name: str) -> HeadLayout | str:
        if not isinstance(module.norm, nn.Identity):
            return f"{type(module.norm).__name__} across all heads before proj"
        dim = module.num_heads * module.head_dim
        channels = tuple(range(dim))
        producers = [(f"{name}.qkv", channels * 3)]
        if module.gate is not None:
            producers.append((f"{name}.gate", channels))
        # The attention products themselves (no module of their own) scale with the heads.
        producers.append((name, channels))
        return HeadLayout(module.num_heads, module.head_dim, f"{name}.proj", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        size, dim = module.head_dim, module.num_heads * module.head_dim
        channels = [h * size + d for h in kept for d in range(size)]
        _keep_rows(module.qkv, [part * dim + c for part in range(3) for c in channels])
        if module.gate is not None:
            _keep_rows(module.gate, channels)
        _keep_columns(module.proj, channels)
        module.num_heads = len(kept)
        module.attn_dim = len(kept) * size


# Imported here, not at the top: their handlers subclass AttentionHeads, defined above.
from gfsprune.surgery.hf_heads import HF_TYPES  # noqa: E402
from gfsprune.surgery.mlp_units import MLP_TYPES  # noqa: E402

#: The handlers :func:`find_heads` tries, in order: attention heads (timm, transformers),
#: then gated MLPs, whose hidden neurons are heads of one channel.
ATTENTION_TYPES: tuple[type[AttentionHeads], ...] = (TimmAttention, *HF_TYPES, *MLP_TYPES)


def find_heads(
    model: nn.Module,
) -> tuple[dict[str, tuple[type[AttentionHeads], HeadLayout]], dict[str, str]]:
    """The attention modules of ``model`` whose heads can be pruned (name to handler and
    layout), and those of a known type that cannot (name to the reason)."""
    found: dict[str, tuple[type[AttentionHeads], HeadLayout]] = {}
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        handler = next((h for h in ATTENTION_TYPES if h.matches(module)), None)
        if handler is None:
            continue
        layout = handler.layout(module, name)
        if isinstance(layout, str):
            refused[name] = f"{type(module).__name__} heads: {layout}"
        else:
            found[name] = handler, layout
    return found, refused
