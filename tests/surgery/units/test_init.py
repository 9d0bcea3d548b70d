"""Every transformers block's attention heads and gated MLP neurons are unit layers: a masked
unit equals a removed one, any number of a layer's units down to one can be kept, and
grouped-query attention is pruned in whole key/value groups so the model stays valid."""

from __future__ import annotations

import pytest
import torch

from gfsprune.surgery import find_layers
from gfsprune.surgery.units.attention import BertHeads, GPT2Heads, ProjectionHeads
from gfsprune.surgery.units.mlp import GatedMLP
from tests import hf_nets
from tests.surgery.units import masked_and_pruned

pytest.importorskip("transformers")


# (family, head, options): the layers' handlers and item counts, attention then MLP per block
CASES = {
    "bert": ("bert", "", {}, (BertHeads, 4), (None, 64)),
    "roberta": ("roberta", "", {}, (BertHeads, 4), (None, 64)),
    "gpt2": ("gpt2", "LMHeadModel", {}, (GPT2Heads, 4), (None, 64)),
    "vit": ("vit", "", {}, (ProjectionHeads, 4), (None, 64)),
    "llama-gqa": ("llama", "ForCausalLM", {}, (ProjectionHeads, 2), (GatedMLP, 64)),
    "llama-mqa": ("llama", "", {"num_key_value_heads": 1}, (ProjectionHeads, 4), (GatedMLP, 64)),
    "llama-mha": ("llama", "", {"num_key_value_heads": 4}, (ProjectionHeads, 4), (GatedMLP, 64)),
    "mistral": ("mistral", "", {}, (ProjectionHeads, 2), (GatedMLP, 64)),
    "qwen2": ("qwen2", "", {}, (ProjectionHeads, 2), (GatedMLP, 64)),
    "qwen3": ("qwen3", "", {}, (ProjectionHeads, 2), (GatedMLP, 64)),
}


@pytest.mark.parametrize("case", CASES)
def test_masked_transformers_items_equal_removed_ones(case) -> None:
    family, head, options, attention, mlp = CASES[case]
    model, x = hf_nets.tiny(family, head, **options), hf_nets.inputs(family)
    layers, skipped = find_layers(model, x)
    assert [(layer.units, layer.n_items) for layer in layers] == [attention, mlp] * 2
    assert skipped == []
    masked, got, _ = masked_and_pruned(model, x, lambda layer: [1, layer.n_items - 1])
    torch.testing.assert_close(got, masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("keep", ["all", "one"])
def test_a_layer_keeps_all_its_heads_or_only_one(keep) -> None:
    model, x = hf_nets.tiny("llama", "ForCausalLM"), hf_nets.inputs("llama")
    pick = (lambda layer: range(layer.n_items)) if keep == "all" else (lambda layer: [0])
    masked, got, pruned = masked_and_pruned(model, x, pick)
    torch.testing.assert_close(got, masked, rtol=1e-4, atol=1e-5)
    attention = pruned.model.model.layers[0].self_attn
    groups = 2 if keep == "all" else 1
    assert attention.k_proj.out_features == attention.v_proj.out_features == groups * 8
    assert attention.q_proj.out_features == attention.o_proj.in_features == groups * 2 * 8
    assert attention.num_key_value_groups == 2  # the grouping itself is kept
    assert pruned.model.model.layers[0].mlp.up_proj.out_features == (64 if keep == "all" else 1)


def _pruned(family: str, items: list[int], **options) -> torch.nn.Module:
    """A tiny ``family`` base model with ``items`` of every layer kept (transformers module)."""
    model, x = hf_nets.tiny(family, **options), hf_nets.inputs(family)
    return masked_and_pruned(model, x, lambda layer: items)[2].model


def test_pruned_transformers_record_their_new_head_counts() -> None:
    bert = _pruned("bert", [0, 2]).encoder.layer[0]
    assert bert.attention.self.num_attention_heads == 2
    assert bert.attention.self.all_head_size == bert.attention.output.dense.in_features == 16
    gpt2 = _pruned("gpt2", [3]).h[1]
    assert (gpt2.attn.num_heads, gpt2.attn.split_size, gpt2.attn.c_attn.out_features) == (1, 8, 24)
    mqa = _pruned("llama", [0, 3], num_key_value_heads=1).layers[1]
    assert mqa.self_attn.num_key_value_groups == 2 and mqa.self_attn.k_proj.out_features == 8
