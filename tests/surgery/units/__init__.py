"""Helpers of the unit-handler tests."""

from __future__ import annotations

import torch

from gfsprune.surgery import Masks, find_layers, prune_channels


def masked_and_pruned(model, x, pick):
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
