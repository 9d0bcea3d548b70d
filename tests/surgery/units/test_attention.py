"""Attention heads are units: masked heads equal removed ones, whole heads are removed with
``num_heads`` updated, and blocks that cannot be pruned exactly are skipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gfsprune
from gfsprune import Macs, PruneConfig, prune
from gfsprune.surgery import Masks, find_layers, prune_channels
from gfsprune.surgery.units.attention import GPT2Heads
from tests import hf_nets
from tests.nets import tiny_vit

timm = pytest.importorskip("timm")
from timm.layers import Attention  # noqa: E402


class Tokens(nn.Module):
    """An embedding, one gated attention module and a classifier over the mean token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = Attention(16, num_heads=4, gated=True, qkv_bias=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(self.embed(x)).mean(1))


def test_heads_of_timm_attention_form_one_layer_each() -> None:
    model, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    layers, skipped = find_layers(model, x)
    heads = [layer for layer in layers if layer.units is not None]
    assert [layer.name for layer in heads] == ["blocks.0.attn", "blocks.1.attn"]
    assert heads[0].n_items == 4 and heads[0].item_size == 6
    assert heads[0].items[1] == tuple(range(6, 12))
    assert [c.name for c in heads[0].consumers] == ["blocks.0.attn.proj"]
    # the MLP's hidden neurons stay one item each; no group through qkv remains
    mlp = next(layer for layer in layers if layer.name == "blocks.0.mlp.fc1")
    assert mlp.items is None and mlp.width == 48
    assert not [name for name in (layer.name for layer in layers) if "qkv" in name]
    assert all("qkv" not in entry for entry in skipped)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (tiny_vit, (2, 3, 16, 16)),
        (lambda: tiny_vit(qk_norm=True), (2, 3, 16, 16)),
        (Tokens, (2, 5, 6)),
    ],
)
def test_masked_heads_equal_removed_heads(make, shape) -> None:
    model, x = make().eval(), torch.randn(*shape)
    layers, _ = find_layers(model, x)
    kept = {layer.name: layer.channels([1, 3]) for layer in layers if layer.units is not None}
    with Masks(model, layers) as masks, torch.no_grad():
        for layer in layers:
            if layer.name in kept:
                masks.set(layer, kept[layer.name], 2.0)
        masked = model(x)
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, 2.0))
    for name in kept:
        attn = pruned.get_submodule(name)
        assert attn.num_heads == 2 and attn.head_dim == model.get_submodule(name).head_dim
        assert attn.qkv.out_features == 3 * 2 * attn.head_dim == 3 * attn.proj.in_features
        assert attn.scale == model.get_submodule(name).scale
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_vit_is_pruned_to_whole_heads_and_reloads(tmp_path) -> None:
    model, x = tiny_vit(), torch.randn(4, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g))]
    result = prune(
        model,
        data * 4,
        x[:1],
        target=Macs(0.5),
        config=PruneConfig(candidates=8),
        progress=False,
    )
    assert abs(result.macs_ratio - 0.5) < 0.02
    assert result.model(x).shape == (4, 5)
    for block in result.model.blocks:
        attn = block.attn
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
        assert attn.proj.in_features == attn.num_heads * attn.head_dim
    heads = [p for p in result.plan if p.name.endswith(".attn")]
    assert heads and all(len(p.kept) % 6 == 0 for p in heads)
    gfsprune.save(result, tmp_path)
    loaded = gfsprune.load(tmp_path, tiny_vit())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))


def test_attention_with_a_norm_across_heads_is_skipped_and_named() -> None:
    model, x = tiny_vit(scale_attn_norm=True), torch.randn(2, 3, 16, 16)
    layers, skipped = find_layers(model, x)
    assert all(layer.units is None for layer in layers)
    assert "blocks.0.attn (Attention heads: LayerNorm across all heads before proj)" in skipped
    assert any(layer.name == "blocks.0.mlp.fc1" for layer in layers)


def test_an_unprepared_gpt2_attention_is_refused_with_the_fix() -> None:
    transformers = pytest.importorskip("transformers")
    raw = transformers.GPT2Model(hf_nets.config("gpt2")).h[0].attn
    reason = GPT2Heads.layout(raw, "attn")
    assert reason == (
        "'c_attn' is a Conv1D, not nn.Linear (make transformers' Conv1D linear: "
        "gfsprune.models.hf.prepare)"
    )
