"""The paper's fine-tuning after each pruned layer: a few SGD steps on the masked network.

The official code fine-tunes the whole network for 0.1 epoch (SGD, learning rate 2.5e-3,
weight decay 4e-5) after each pruned layer before it selects the next one, so that later
layers are chosen on weights that have adapted to the earlier cuts. Here the masked network
trains (BatchNorms in training mode, so their statistics follow too); removed channels
receive no gradient through their masked consumers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gfsprune._inputs import run_model
from gfsprune.core.stream import BatchStream
from gfsprune.errors import ConfigError, LossError

__all__ = ["LayerTuning", "tune"]


@dataclass(frozen=True)
class LayerTuning:
    """SGD after each pruned layer (``PruneConfig(tuning=...)``).

    Attributes:
        steps: Mini-batches per layer (the paper: a tenth of an epoch).
        lr: Learning rate (the paper: 2.5e-3).
        momentum: SGD momentum (0.9, the paper's recipe).
        weight_decay: L2 penalty (the paper: 4e-5).
    """

    steps: int
    lr: float = 2.5e-3
    momentum: float = 0.9
    weight_decay: float = 4e-5

    def __post_init__(self) -> None:
        s = self.steps
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ConfigError(
                f"The 'steps' parameter of LayerTuning must be a positive integer. Got {s!r} "
                "instead."
            )
        for name, low in (("lr", 0.0), ("momentum", None), ("weight_decay", None)):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value > 0 if low == 0.0 else value >= 0)
            if not ok:
                kind = "a positive" if low == 0.0 else "a non-negative"
                raise ConfigError(
                    f"The '{name}' parameter of LayerTuning must be {kind} number. Got "
                    f"{value!r} instead."
                )


def tune(
    model: nn.Module,
    stream: BatchStream,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tuning: LayerTuning,
) -> None:
    """Train ``model`` (masked, in place) for ``tuning.steps`` mini-batches of ``stream``,
    then put it back in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=tuning.lr, momentum=tuning.momentum, weight_decay=tuning.weight_decay
    )
    model.train()
    try:
        for step in range(tuning.steps):
            inputs, targets = stream.next()
            with torch.enable_grad():
                loss = loss_fn(run_model(model, inputs), targets)
                if not torch.isfinite(loss):
                    raise LossError(
                        f"Fine-tuning after a pruned layer reached a loss of {float(loss)} at "
                        f"step {step + 1}; lower LayerTuning.lr."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
