"""Timing: warm-up calls untimed, then at least ``repeats`` and, until ``min_seconds`` of
timed calls, more (at most ``max_repeats``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune.core.timing import batched, median_seconds


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


@pytest.mark.parametrize(
    ("options", "calls"),
    [
        ({"warmup": 2, "repeats": 5}, 7),
        ({"warmup": 1, "repeats": 3, "min_seconds": 1e6, "max_repeats": 9}, 10),
        ({"warmup": 0, "repeats": 4, "min_seconds": 1e6, "max_repeats": 2}, 4),
    ],
)
def test_calls_counted(options: dict, calls: int) -> None:
    module = Counting()
    assert median_seconds(module, torch.zeros(2), **options) >= 0
    assert module.calls == calls


def test_batched_repeats_every_tensor_in_new_memory() -> None:
    example = {"ids": torch.arange(3)[None], "mask": (torch.ones(1, 3),)}
    inputs = batched(example, 4)
    assert inputs["ids"].shape == (4, 3) and inputs["mask"][0].shape == (4, 3)
    inputs["ids"][1, 0] = 7
    assert example["ids"][0, 0] == 0 and inputs["ids"][0, 0] == 0
