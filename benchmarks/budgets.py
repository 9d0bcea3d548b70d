"""Budgets the transformer benchmarks state in prunable MACs (``transformers.py``,
``real.py``'s Brown case): a share of what pruning can remove, as the whole model's ratio."""

from __future__ import annotations

import numpy as np
from torch import nn

from gfsprune.core.compute_cost import ComputeCost
from gfsprune.surgery import find_layers


def prunable_share(model: nn.Module, example: object, share: float) -> float:
    """The ``Macs`` ratio of the whole model that keeps ``share`` of the MACs of its
    prunable layers (e.g. attention heads with their products, MLP neurons)."""
    layers, _ = find_layers(model, example)
    cost = ComputeCost(model, example, layers)
    fixed = cost.predict([np.zeros(layer.width) for layer in layers])["macs"]
    return (fixed + share * (cost.full["macs"] - fixed)) / cost.full["macs"]
