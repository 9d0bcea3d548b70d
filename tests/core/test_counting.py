"""MACs and parameter counts."""

from __future__ import annotations

import pytest
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


def test_counts_a_model_whose_forward_fails_under_no_grad_counting() -> None:
    # timm's CaiT: torch's FLOP counter under no_grad raised "Expected gradient function to
    # be set" from its module tracker.
    cait = pytest.importorskip("timm.models.cait")
    model = cait.Cait(
        img_size=16,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        depth_token_only=1,
        num_classes=3,
    ).eval()
    macs, params = count(model, torch.zeros(1, 3, 16, 16))
    assert macs > 0 and params == sum(p.numel() for p in model.parameters())
    assert not model.training
