"""Attention heads as units: one handler per attention module type.

A head layer's channels are the inputs of the attention's output projection (``num_heads x
head_dim``, head ``h`` owning ``h * head_dim ... (h + 1) * head_dim - 1``); its units are the
heads. Masking a head's inputs of the output projection is exactly removing the head: its
queries, keys and values reach the output only through those inputs, and softmax runs within
each head. Removal takes the head's query, key and value rows out of the input projections
and its columns out of the output projection, and lowers the module's head count;
``head_dim`` and the softmax scale stay. Attention modules of other types are left to the
channel rules, which skip their query and key channels (they reach no Conv or Linear layer).

- :class:`TimmAttention`: timm's ``Attention`` (ViT, DeiT, ...).
- :class:`BertHeads`: BERT and RoBERTa (``query``, ``key``, ``value`` in ``self``, the output
  projection ``output.dense``).
- :class:`GPT2Heads`: GPT-2 (a fused ``c_attn``, rows q, k, v; ``c_proj``). transformers'
  ``Conv1D`` (a transposed linear layer) must first be made ``nn.Linear``:
  :func:`gfsprune.models.hf.prepare` does that, as does every ``hf:DIR`` load.
- :class:`ProjectionHeads`: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (LLaMA, Mistral,
  Qwen2/3, ViT), with grouped-query attention (below). Rotary embeddings act within each head
  and per-head norms (Qwen3's ``q_norm``) on ``head_dim``: neither changes.

The transformers handlers are tested on transformers 5; a module of a known class whose parts
are not where the handler looks is skipped with the reason. Their MLPs' hidden neurons are
units too (gated MLPs, :mod:`gfsprune.surgery.units.mlp`) or Torch-Pruning's channel layers
(BERT's ``intermediate``/``output``, GPT-2's ``c_fc``/``c_proj``, ViT's ``fc1``/``fc2``).

Grouped-query attention (``num_key_value_heads`` < ``num_attention_heads``): every key/value
head serves ``num_key_value_groups`` query heads, and the model repeats each key/value head
that many times, so every group must keep the same number of query heads. Units are
therefore whole groups (a key/value head with its query heads): removing one lowers the
key/value heads and keeps ``num_key_value_groups``, so the model stays valid for any choice.
With a single key/value head (multi-query attention) there is one group, so units are its
query heads instead, and ``num_key_value_groups`` becomes the count kept.
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

__all__ = ["ATTENTION_HANDLERS", "BertHeads", "GPT2Heads", "ProjectionHeads", "TimmAttention"]


class TimmAttention(UnitHandler):
    """timm's ``Attention`` (ViT, DeiT, ...): a fused ``qkv`` linear layer (rows q, k, v,
    each ``num_heads x head_dim``), an optional sigmoid ``gate`` per channel, ``proj``.
    A ``scale_norm`` (a norm across all heads before ``proj``) cannot be masked exactly."""

    unit = "heads"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        try:
            from timm.layers.attention import Attention
        except ImportError:  # timm is an optional dependency
            return False
        return type(module) is Attention

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        if not isinstance(module.norm, nn.Identity):
            return f"{type(module.norm).__name__} across all heads before proj"
        dim = module.num_heads * module.head_dim
        channels = tuple(range(dim))
        producers = [(f"{name}.qkv", channels * 3)]
        if module.gate is not None:
            producers.append((f"{name}.gate", channels))
        # The attention products themselves (no module of their own) scale with the heads.
        producers.append((name, channels))
        return UnitLayout(module.num_heads, module.head_dim, f"{name}.proj", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        size, dim = module.head_dim, module.num_heads * module.head_dim
        channels = [h * size + d for h in kept for d in range(size)]
        keep_rows(module.qkv, [part * dim + c for part in range(3) for c in channels])
        if module.gate is not None:
            keep_rows(module.gate, channels)
        keep_columns(module.proj, channels)
        module.num_heads = len(kept)
        module.attn_dim = len(kept) * size


def _channels(heads: Sequence[int], size: int) -> list[int]:
    """The channels of ``heads``, each ``size`` wide."""
    return [h * size + d for h in heads for d in range(size)]


class BertHeads(UnitHandler):
    """BERT's (and RoBERTa's) ``*Attention``: ``self.query``, ``self.key``, ``self.value``
    (``num_attention_heads x attention_head_size`` each), then ``output.dense``."""

    unit = "heads"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return is_transformers(module, frozenset({"BertAttention", "RobertaAttention"}))

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        if getattr(module, "is_cross_attention", False):
            return "cross-attention (keys and values from another sequence)"
        attention = getattr(module, "self", None)
        reason = linears_reason(attention, ("query", "key", "value")) if attention else "no 'self'"
        reason = reason or linears_reason(getattr(module, "output", None), ("dense",))
        if reason:
            return reason
        heads, size = attention.num_attention_heads, attention.attention_head_size
        channels = tuple(range(heads * size))
        producers = [(f"{name}.self.{part}", channels) for part in ("query", "key", "value")]
        producers.append((f"{name}.self", channels))  # the attention products
        return UnitLayout(heads, size, f"{name}.output.dense", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        attention = module.self
        channels = _channels(kept, attention.attention_head_size)
        for part in (attention.query, attention.key, attention.value):
            keep_rows(part, channels)
        keep_columns(module.output.dense, channels)
        attention.num_attention_heads = len(kept)
        attention.all_head_size = len(channels)


class GPT2Heads(UnitHandler):
    """GPT-2's ``GPT2Attention``: ``c_attn`` (rows q, k, v, each ``num_heads x head_dim``)
    split at ``split_size``, then ``c_proj``; both ``nn.Linear`` after
    :func:`gfsprune.models.hf.prepare`."""

    unit = "heads"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return is_transformers(module, frozenset({"GPT2Attention"}))

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        if module.is_cross_attention:
            return "cross-attention (keys and values from another sequence)"
        reason = linears_reason(module, ("c_attn", "c_proj"))
        if reason:
            return f"{reason} (make transformers' Conv1D linear: gfsprune.models.hf.prepare)"
        channels = tuple(range(module.num_heads * module.head_dim))
        producers = ((f"{name}.c_attn", channels * 3), (name, channels))
        return UnitLayout(module.num_heads, module.head_dim, f"{name}.c_proj", producers)

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        dim = module.num_heads * module.head_dim
        channels = _channels(kept, module.head_dim)
        keep_rows(module.c_attn, [part * dim + c for part in range(3) for c in channels])
        keep_columns(module.c_proj, channels)
        module.num_heads = len(kept)
        module.split_size = len(channels)  # where forward() splits c_attn into q, k, v


class ProjectionHeads(UnitHandler):
    """``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` attention (LLaMA, Mistral, Qwen2/3,
    ViT), in items of whole key/value groups (one query head each without grouping), or of
    query heads where there is a single key/value head (see the module docstring)."""

    unit = "heads"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        names = {"LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention"}
        return is_transformers(module, frozenset({*names, "ViTAttention"}))

    @staticmethod
    def _sizes(module: nn.Module) -> tuple[int, int, int]:
        """``(query heads, key/value heads, head_dim)``."""
        size = module.head_dim
        return module.o_proj.in_features // size, module.k_proj.out_features // size, size

    @staticmethod
    def layout(module: nn.Module, name: str) -> UnitLayout | str:
        reason = linears_reason(module, ("q_proj", "k_proj", "v_proj", "o_proj"))
        if reason:
            return reason
        heads, groups, size = ProjectionHeads._sizes(module)
        repeat = getattr(module, "num_key_value_groups", 1)
        if heads != groups * repeat or module.q_proj.out_features != heads * size:
            return (
                f"{heads} query heads are not {groups} key/value heads times "
                f"num_key_value_groups={repeat}"
            )
        channels = tuple(range(heads * size))
        producers = [(f"{name}.q_proj", channels), (name, channels)]
        if groups == 1:  # multi-query: items are query heads, the key and value stay whole
            return UnitLayout(heads, size, f"{name}.o_proj", tuple(producers))
        # A group's key/value channel d stands for channel d of the group's first query head.
        shared = tuple(g * repeat * size + d for g in range(groups) for d in range(size))
        producers += [(f"{name}.k_proj", shared), (f"{name}.v_proj", shared)]
        return UnitLayout(groups, repeat * size, f"{name}.o_proj", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        heads, groups, size = ProjectionHeads._sizes(module)
        if groups == 1:
            queries = list(kept)
            module.num_key_value_groups = len(kept)
        else:
            repeat = heads // groups
            queries = [g * repeat + r for g in kept for r in range(repeat)]
            keep_rows(module.k_proj, _channels(kept, size))
            keep_rows(module.v_proj, _channels(kept, size))
        channels = _channels(queries, size)
        keep_rows(module.q_proj, channels)
        keep_columns(module.o_proj, channels)
        if hasattr(module, "num_attention_heads"):  # ViT records it (unused by its forward)
            module.num_attention_heads = len(queries)


#: The attention handlers, in the order :func:`~gfsprune.surgery.units.find_units` tries them.
ATTENTION_HANDLERS: tuple[type[UnitHandler], ...] = (
    TimmAttention,
    BertHeads,
    GPT2Heads,
    ProjectionHeads,
)
