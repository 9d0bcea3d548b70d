"""transformers attention heads and gated MLP neurons (and timm's gated MLPs) are items: a
masked item equals a removed one, any number of a layer's items down to one can be kept, and
grouped-query attention is pruned in whole key/value groups so the model stays valid."""

from __future__ import annotations

import functools

import pytest
import torch

from gfsprune.surgery import Masks, find_layers, prune_channels
from gfsprune.surgery.hf_heads import BertHeads, GPT2Heads, ProjectionHeads
from gfsprune.surgery.mlp_units import GatedMLP, TimmGluMlp
from tests import hf_nets
from tests.nets import tiny_vit

pytest.importorskip("transformers")


def _masked_and_pruned(model, x, pick):
    """The masked model's and the pruned model's outputs with ``pick(layer)`` items kept
    (scale 2), and the pruned model."""
    layers, _ = find_layers(model, x)
    kept = {layer.name: layer.channels(pick(layer)) for layer in layers}
    with Masks(model, layers) as masks, torch.no_grad():
        for layer in layers:
            masks.set(layer, kept[layer.name], 2.0)
        masked = model(**x)
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, 2.0))
    with torch.no_grad():
        return masked, pruned(**x), pruned


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
    assert [(layer.heads, layer.n_items) for layer in layers] == [attention, mlp] * 2
    assert skipped == []
    masked, got, _ = _masked_and_pruned(model, x, lambda layer: [1, layer.n_items - 1])
    torch.testing.assert_close(got, masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("keep", ["all", "one"])
def test_a_layer_keeps_all_its_heads_or_only_one(keep) -> None:
    model, x = hf_nets.tiny("llama", "ForCausalLM"), hf_nets.inputs("llama")
    pick = (lambda layer: range(layer.n_items)) if keep == "all" else (lambda layer: [0])
    masked, got, pruned = _masked_and_pruned(model, x, pick)
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
    return _masked_and_pruned(model, x, lambda layer: items)[2].model


def test_pruned_transformers_record_their_new_head_counts() -> None:
    bert = _pruned("bert", [0, 2]).encoder.layer[0]
    assert bert.attention.self.num_attention_heads == 2
    assert bert.attention.self.all_head_size == bert.attention.output.dense.in_features == 16
    gpt2 = _pruned("gpt2", [3]).h[1]
    assert (gpt2.attn.num_heads, gpt2.attn.split_size, gpt2.attn.c_attn.out_features) == (1, 8, 24)
    mqa = _pruned("llama", [0, 3], num_key_value_heads=1).layers[1]
    assert mqa.self_attn.num_key_value_groups == 2 and mqa.self_attn.k_proj.out_features == 8
    assert mqa.mlp.intermediate_size == 2


def test_an_unprepared_gpt2_attention_is_refused_with_the_fix() -> None:
    transformers = pytest.importorskip("transformers")
    raw = transformers.GPT2Model(hf_nets.config("gpt2")).h[0].attn
    reason = GPT2Heads.layout(raw, "attn")
    assert reason == (
        "'c_attn' is a Conv1D, not nn.Linear (make transformers' Conv1D linear: "
        "gfsprune.models.hf.prepare)"
    )


@pytest.mark.parametrize(
    "mlp",
    [
        pytest.param("SwiGLU", id="swiglu"),
        pytest.param("GluMlp", id="glu"),
        pytest.param("SwiGLUPacked", id="swiglu-packed"),
    ],
)
def test_timm_gated_mlps_are_pruned_by_neuron(mlp) -> None:
    layers_module = pytest.importorskip("timm.layers")
    layer_class = getattr(layers_module, mlp)
    if mlp == "GluMlp":
        layer_class = functools.partial(layer_class, act_layer=torch.nn.SiLU)
    model, x = tiny_vit(mlp_layer=layer_class), torch.randn(2, 3, 16, 16)
    layers, _ = find_layers(model, x)
    neurons = 48 if mlp == "SwiGLU" else 24  # GluMlp halves its fc1 into value and gate
    assert [layer.n_items for layer in layers] == [4, neurons] * 2
    assert (layers[1].heads is TimmGluMlp) == (mlp != "SwiGLU")
    kept = {layer.name: layer.channels([0, layer.n_items - 1]) for layer in layers}
    with Masks(model, layers) as masks, torch.no_grad():
        for layer in layers:
            masks.set(layer, kept[layer.name], 2.0)
        masked = model(x)
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, 2.0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
