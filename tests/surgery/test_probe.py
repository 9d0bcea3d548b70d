"""Layers whose removal is not what masking computes (a channel count fixed outside the
Conv/Linear layers) are found by a trial cut before selection and skipped, naming the module
and the op; the model is left as it was and the rest is pruned exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gfsprune import Widths, prune
from gfsprune.surgery import find_layers, prune_channels, removable_layers, removal_difference
from tests.nets import PartialConv, randomize_norms


class Ghost(nn.Module):
    """GhostNet's module: a primary and a cheap (depthwise) convolution concatenated, then
    sliced to a fixed count, then a 1x1 convolution and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.primary = nn.Conv2d(4, 3, 1)
        self.cheap = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.out_chs = 5
        self.head, self.fc = nn.Conv2d(5, 4, 1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(torch.relu(self.stem(x)))
        out = torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.out_chs]
        return self.fc(torch.relu(self.head(out)).mean((2, 3)))


class Heads(nn.Module):
    """A projection whose output is reshaped by a fixed head count and head size."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.fc = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.proj(x).reshape(x.shape[0], 2, 4)
        return self.fc(heads.flatten(1))


def test_a_split_of_fixed_sizes_is_found_and_named() -> None:
    model, x = randomize_norms(PartialConv()), torch.randn(1, 3, 5, 5)
    before = copy.deepcopy(model.state_dict())
    layers, _ = find_layers(model, x)
    good, skipped = removable_layers(model, x, layers)
    assert [layer.name for layer in good] == ["pc", "c1"]
    assert len(skipped) == 1
    assert skipped[0].startswith("c0 (removing its channels is not what masking does: the model")
    assert "at `a, b = torch.split(x, [2, 6], dim=1)  # b is used" in skipped[0]
    assert "RuntimeError: split_with_sizes expects split_sizes to sum exactly to" in skipped[0]
    for name, value in model.state_dict().items():  # the trial cut was undone
        assert torch.equal(value, before[name]), name
    assert model.c0.out_channels == 8 and model.pc.in_channels == 2


def test_a_slice_to_a_fixed_count_is_skipped_and_the_rest_pruned_exactly() -> None:
    torch.manual_seed(0)
    model, x = Ghost().eval(), torch.randn(2, 3, 4, 4)
    layers, _ = find_layers(model, x)
    good, skipped = removable_layers(model, x, layers)
    assert [layer.name for layer in good] == ["stem", "head"]
    assert skipped == [
        "primary (removing its channels is not what masking does: 'head' at `return "
        "self.fc(torch.relu(self.head(out)).mean((2, 3)))` (test_probe.py:32): RuntimeError: "
        "Given groups=1, weight of size [4, 3, 1, 1], expected input[2, 2, 4, 4] to have 3 "
        "channels, but got 2 channels instead)"
    ]
    data = [(torch.randn(4, 3, 4, 4), torch.randint(0, 2, (4,)))] * 3
    result = prune(model, data, x[:1], target=Widths({"stem": 2}), progress=False)
    assert any(s.startswith("primary (removing its channels") for s in result.skipped)
    assert result.model.stem.out_channels == 2 and result.model.primary.out_channels == 3


def test_a_reshape_by_a_fixed_head_count_is_named() -> None:
    torch.manual_seed(0)
    model, x = Heads().eval(), torch.randn(1, 6)
    layers, _ = find_layers(model, x)
    kept = {"proj": [0, 1, 2, 3, 4, 5]}
    pruned = prune_channels(model, x, kept, layers=layers)
    reason = removal_difference(model, pruned, x, layers, kept, {})
    assert reason == (
        "the model at `heads = self.proj(x).reshape(x.shape[0], 2, 4)` (test_probe.py:43): "
        "RuntimeError: shape '[1, 2, 4]' is invalid for input of size 6"
    )


class CountsChannels(nn.Module):
    """Adds 0.01 where its hidden layer has fewer than 4 channels: in every dtype, or (as
    rounding amplified by a narrow network would) only in float32."""

    def __init__(self, float32_only: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.float32_only = float32_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        shifted = h.shape[1] < 4 and (x.dtype == torch.float32 or not self.float32_only)
        return self.fc2(h) + (0.01 if shifted else 0.0)


def test_a_difference_of_float32_rounding_alone_passes_with_a_warning(caplog) -> None:
    torch.manual_seed(0)
    x, kept = torch.randn(2, 3), {"fc1": [0, 2]}
    for float32_only in (True, False):
        model = CountsChannels(float32_only).eval()
        layers, _ = find_layers(model, x)
        pruned = prune_channels(model, x, kept, layers=layers)
        caplog.clear()
        reason = removal_difference(model, pruned, x, layers, kept, {})
        if float32_only:  # the float64 copies agree: rounding, not a different computation
            assert reason is None
            assert "move by up to 0.01 under float rounding" in caplog.text
        else:
            assert reason == "outputs differ by up to 0.01"
        assert model.fc1.weight.dtype == torch.float32  # the copies were widened, not it
