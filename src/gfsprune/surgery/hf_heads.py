"""Hugging Face transformers attention heads as selection items.

Handlers behind :class:`~gfsprune.surgery.heads.AttentionHeads`, as for timm's attention:
each block is one layer whose channels are the inputs of its output projection (a linear
layer), masked there; its items are heads (or grouped-query groups), removed by the handler
from every projection. Tested on transformers 5; a module of a known class whose parts are
not where the handler looks is skipped with the reason.

- :class:`BertHeads`: BERT and RoBERTa (``query``, ``key``, ``value`` in ``self``, the output
  projection ``output.dense``).
- :class:`GPT2Heads`: GPT-2 (a fused ``c_attn``, rows q, k, v; ``c_proj``). transformers'
  ``Conv1D`` (a transposed linear layer) must first be made ``nn.Linear``:
  :func:`gfsprune.models.hf.prepare` does that, as does every ``hf:DIR`` load.
- :class:`ProjectionHeads`: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (LLaMA, Mistral,
  Qwen2/3, ViT), with grouped-query attention (below). Rotary embeddings act within each head
  and per-head norms (Qwen3's ``q_norm``) on ``head_dim``: neither changes.

Their MLPs' hidden neurons are items too: gated MLPs through :mod:`gfsprune.surgery.mlp_units`,
plain ones (BERT's ``intermediate``/``output``, GPT-2's ``c_fc``/``c_proj``, ViT's
``fc1``/``fc2``) as Torch-Pruning's channel layers.

Grouped-query attention (``num_key_value_heads`` < ``num_attention_heads``): every key/value
head serves ``num_key_value_groups`` query heads, and the model repeats each key/value head
that many times, so every group must keep the same number of query heads. Items are
therefore whole groups (a key/value head with its query heads): removing one lowers the
key/value heads and keeps ``num_key_value_groups``, so the model stays valid for any choice.
With a single key/value head (multi-query attention) there is one group, so items are its
query heads instead, and ``num_key_value_groups`` becomes the count kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gfsprune.surgery.heads import AttentionHeads, HeadLayout, _keep_columns, _keep_rows

__all__ = [
    "HF_TYPES",
    "BertHeads",
    "GPT2Heads",
    "ProjectionHeads",
    "is_transformers",
    "linears_reason",
]


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


def _channels(heads: Sequence[int], size: int) -> list[int]:
    """The channels of ``heads``, each ``size`` wide."""
    return [h * size + d for h in heads for d in range(size)]


class BertHeads(AttentionHeads):
    """BERT's (and RoBERTa's) ``*Attention``: ``self.query``, ``self.key``, ``self.value``
    (``num_attention_heads x attention_head_size`` each), then ``output.dense``."""

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return is_transformers(module, frozenset({"BertAttention", "RobertaAttention"}))

    @staticmethod
    def layout(module: nn.Module, name: str) -> HeadLayout | str:
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
        return HeadLayout(heads, size, f"{name}.output.dense", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        attention = module.self
        channels = _channels(kept, attention.attention_head_size)
        for part in (attention.query, attention.key, attention.value):
            _keep_rows(part, channels)
        _keep_columns(module.output.dense, channels)
        attention.num_attention_heads = len(kept)
        attention.all_head_size = len(channels)


class GPT2Heads(AttentionHeads):
    """GPT-2's ``GPT2Attention``: ``c_attn`` (rows q, k, v, each ``num_heads x head_dim``)
    split at ``split_size``, then ``c_proj``; both ``nn.Linear`` after
    :func:`gfsprune.models.hf.prepare`."""

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return is_transformers(module, frozenset({"GPT2Attention"}))

    @staticmethod
    def layout(module: nn.Module, name: str) -> HeadLayout | str:
        if module.is_cross_attention:
            return "cross-attention (keys and values from another sequence)"
        reason = linears_reason(module, ("c_attn", "c_proj"))
        if reason:
            return f"{reason} (make transformers' Conv1D linear: gfsprune.models.hf.prepare)"
        channels = tuple(range(module.num_heads * module.head_dim))
        producers = ((f"{name}.c_attn", channels * 3), (name, channels))
        return HeadLayout(module.num_heads, module.head_dim, f"{name}.c_proj", producers)

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        dim = module.num_heads * module.head_dim
        channels = _channels(kept, module.head_dim)
        _keep_rows(module.c_attn, [part * dim + c for part in range(3) for c in channels])
        _keep_columns(module.c_proj, channels)
        module.num_heads = len(kept)
        module.split_size = len(channels)  # where forward() splits c_attn into q, k, v


class ProjectionHeads(AttentionHeads):
    """``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` attention (LLaMA, Mistral, Qwen2/3,
    ViT), in items of whole key/value groups (one query head each without grouping), or of
    query heads where there is a single key/value head (see the module docstring)."""

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
    def layout(module: nn.Module, name: str) -> HeadLayout | str:
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
            return HeadLayout(heads, size, f"{name}.o_proj", tuple(producers))
        # A group's key/value channel d stands for channel d of the group's first query head.
        shared = tuple(g * repeat * size + d for g in range(groups) for d in range(size))
        producers += [(f"{name}.k_proj", shared), (f"{name}.v_proj", shared)]
        return HeadLayout(groups, repeat * size, f"{name}.o_proj", tuple(producers))

    @staticmethod
    def remove(module: nn.Module, kept: Sequence[int]) -> None:
        heads, groups, size = ProjectionHeads._sizes(module)
        if groups == 1:
            queries = list(kept)
            module.num_key_value_groups = len(kept)
        else:
            repeat = heads // groups
            queries = [g * repeat + r for g in kept for r in range(repeat)]
            _keep_rows(module.k_proj, _channels(kept, size))
            _keep_rows(module.v_proj, _channels(kept, size))
        channels = _channels(queries, size)
        _keep_rows(module.q_proj, channels)
        _keep_columns(module.o_proj, channels)
        if hasattr(module, "num_attention_heads"):  # ViT records it (unused by its forward)
            module.num_attention_heads = len(queries)


#: The transformers handlers, in the order :func:`~gfsprune.surgery.heads.find_heads` tries.
HF_TYPES: tuple[type[AttentionHeads], ...] = (BertHeads, GPT2Heads, ProjectionHeads)
