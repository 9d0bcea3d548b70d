"""Gated MLPs' hidden neurons are units: a masked neuron equals a removed one, the module
records its new size, and a gated MLP that cannot be masked exactly is named as neurons."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gfsprune.surgery import Masks, find_layers, prune_channels
from gfsprune.surgery.units import find_units
from gfsprune.surgery.units.mlp import TimmGluMlp
from tests import hf_nets
from tests.nets import tiny_vit
from tests.surgery.units import masked_and_pruned


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
    assert (layers[1].units is TimmGluMlp) == (mlp != "SwiGLU")
    kept = {layer.name: layer.channels([0, layer.n_items - 1]) for layer in layers}
    with Masks(model, layers) as masks, torch.no_grad():
        for layer in layers:
            masks.set(layer, kept[layer.name], 2.0)
        masked = model(x)
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, 2.0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_a_gated_mlp_with_a_norm_across_its_neurons_is_refused_as_neurons() -> None:
    layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(layers.GluMlp(8, 16, act_layer=nn.SiLU, norm_layer=nn.LayerNorm))
    found, refused = find_units(model)
    assert found == {}
    assert refused == {"0": "GluMlp neurons: LayerNorm across the hidden neurons before fc2"}


def test_a_pruned_llama_mlp_records_its_intermediate_size() -> None:
    pytest.importorskip("transformers")
    model, x = hf_nets.tiny("llama", num_key_value_heads=1), hf_nets.inputs("llama")
    mlp = masked_and_pruned(model, x, lambda layer: [0, 3])[2].model.layers[1].mlp
    assert mlp.intermediate_size == mlp.down_proj.in_features == 2
    assert mlp.up_proj.out_features == mlp.gate_proj.out_features == 2
