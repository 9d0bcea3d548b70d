"""MACs and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from gfsprune.core.counting import count


def test_conv_and_linear_macs_and_params() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4)
    )
    macs, params = count(model, torch.zeros(1, 3, 5, 5))
    assert macs == 8 * 3 * 9 * 25 + 8 * 25 * 4
    assert params == (8 * 3 * 9 + 8) + (200 * 4 + 4)


def test_macs_scale_with_batch_and_mode_is_restored() -> None:
    model = nn.Linear(4, 2).train()
    assert count(model, torch.zeros(3, 4))[0] == 3 * count(model, torch.zeros(1, 4))[0]
    assert model.training
