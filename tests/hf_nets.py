"""Tiny Hugging Face transformers (random weights, no downloads) shared by the tests: two
layers, hidden width 32, 4 heads of 8 channels, MLP width 64, a vocabulary of 64."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VOCAB, LENGTH = 64, 8
_SIZES = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64)


def config(family: str, **options):
    """The transformers config of a tiny ``family`` model (bert, gpt2, vit, llama, mistral,
    qwen2, qwen3, roberta), eager attention; ``options`` override any of its fields."""
    import transformers

    text = dict(vocab_size=VOCAB, max_position_embeddings=16, **_SIZES)
    built = {
        "bert": lambda: transformers.BertConfig(**text),
        "roberta": lambda: transformers.RobertaConfig(**text),
        "gpt2": lambda: transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, n_inner=64, vocab_size=VOCAB, n_positions=16
        ),
        "vit": lambda: transformers.ViTConfig(**_SIZES, image_size=16, patch_size=8),
        "llama": lambda: transformers.LlamaConfig(**text, num_key_value_heads=2),
        "mistral": lambda: transformers.MistralConfig(**text, num_key_value_heads=2),
        "qwen2": lambda: transformers.Qwen2Config(**text, num_key_value_heads=2),
        "qwen3": lambda: transformers.Qwen3Config(**text, num_key_value_heads=2, head_dim=8),
    }[family]()
    for key, value in {"attn_implementation": "eager", **options}.items():
        # transformers reads the attention implementation from the private attribute
        setattr(built, "_attn_implementation" if key == "attn_implementation" else key, value)
    return built


def raw(family: str, head: str = "", **options) -> nn.Module:
    """A seeded, eval-mode tiny transformers model as transformers builds it: the base model,
    or with ``head`` (e.g. ``"ForCausalLM"``, ``"LMHeadModel"``,
    ``"ForSequenceClassification"``)."""
    import transformers

    made = config(family, **options)
    name = {"gpt2": "GPT2", "vit": "ViT", "bert": "Bert", "roberta": "Roberta"}.get(
        family, family.capitalize()
    )
    torch.manual_seed(0)
    return getattr(transformers, f"{name}{head or 'Model'}")(made).eval()


def tiny(family: str, head: str = "", **options) -> nn.Module:
    """:func:`raw`, prepared for gfsprune (``gfsprune.models.hf.prepare``)."""
    from gfsprune.models.hf import prepare

    return prepare(raw(family, head, **options))


def inputs(family: str, batch: int = 2, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for a tiny ``family`` model: token ids (with a padded attention mask for the
    encoders) or images."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(0, VOCAB, (batch, LENGTH), generator=g)
    if family in ("bert", "roberta"):
        mask = torch.ones(batch, LENGTH, dtype=torch.long)
        mask[0, -2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


def save_folder(folder: Path, model: nn.Module, *, tokenizer: bool = True) -> Path:
    """``save_pretrained`` of a :func:`raw` model into ``folder``, with a word-level
    tokenizer of ``VOCAB`` words (``w2``...) unless ``tokenizer`` is False."""
    model.save_pretrained(folder)
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"[UNK]": 0, "[SEP]": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
        words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="[SEP]")
        fast.save_pretrained(folder)
    return folder
