"""The trained zoo models the quality benchmarks start from (``prune_quality.py``,
``schedules.py``, ``pipelines.py``): one recipe, so that their tables start from the same kind
of model."""

from __future__ import annotations

import torch
from torch import nn

from gfsprune import models
from gfsprune.workflow.data import DataBundle
from gfsprune.workflow.train import TrainConfig, fit


def train_zoo(
    name: str, bundle: DataBundle, *, seed: int, epochs: int, lr: float, **options
) -> nn.Module:
    """Zoo model ``name`` (``options`` for its constructor) built for ``bundle``'s shape and
    classes and trained on ``bundle.train`` (batch 64, on the CPU), in eval mode.

    Label smoothing is off so that the model's test loss is the quantity the pruning
    objective (plain cross-entropy) measures; a smoothed model is deliberately underconfident.
    """
    torch.manual_seed(seed)
    c, h, _ = bundle.input_shape
    model = models.get(name, num_classes=bundle.num_classes, in_channels=c, image_size=h, **options)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=lr, label_smoothing=0.0, seed=seed)
    fit(model, bundle, config, progress=False, device="cpu")
    return model.eval()
