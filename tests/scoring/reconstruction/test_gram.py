"""Gram statistics: the rows and weights reproduce each consumer, and statistics add up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune.scoring.reconstruction.gram import (
    collect_stats,
    outputs,
    positions,
    unsupported,
    weight_matrix,
)
from tests.scoring.reconstruction.cases import CASES

MODULES = {
    "conv2d": (
        nn.Conv2d(
            4, 6, 3, stride=2, padding=(1, 2), dilation=(1, 2), groups=2, padding_mode="reflect"
        ),
        (2, 4, 7, 8),
    ),
    "conv2d-same": (nn.Conv2d(3, 5, (2, 3), padding="same", bias=False), (2, 3, 5, 5)),
    "conv1d": (
        nn.Conv1d(4, 4, 3, stride=2, padding=2, groups=4, padding_mode="circular"),
        (2, 4, 9),
    ),
    "linear": (nn.Linear(5, 3), (2, 4, 5)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", MODULES)
def test_rows_times_the_weight_matrix_are_the_modules_outputs(name: str) -> None:
    torch.manual_seed(0)
    module, shape = MODULES[name]
    x = torch.randn(shape)
    with torch.no_grad():
        expected = outputs(module, module(x)).double()
    got = positions(module, x.double()) @ weight_matrix(module).T
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # float32 module
    assert unsupported(module) is None


def test_unsupported_consumers_are_named() -> None:
    assert "Conv3d" in unsupported(nn.Conv3d(2, 2, 1))


@pytest.mark.parametrize("case", ["fan", "heads"])
def test_statistics_of_chunks_add_up_to_one_pass(case: str) -> None:
    c = CASES[case]()
    whole = collect_stats(c.work, c.unpruned, c.consumers, c.batches)
    first = collect_stats(c.work, c.unpruned, c.consumers, c.batches[:1])
    rest = collect_stats(c.work, c.unpruned, c.consumers, c.batches[1:])
    for name, stats in whole.items():
        summed = first[name] + rest[name]
        assert summed.rows == stats.rows > 0
        for key in ("gram", "cross", "energy"):
            torch.testing.assert_close(getattr(summed, key), getattr(stats, key))


def test_the_unpruned_network_may_be_the_pruned_one() -> None:
    c = CASES["fan"]()
    stats = collect_stats(c.work, c.work, c.consumers, c.batches)
    for name, s in stats.items():
        # the targets are the consumers' own outputs: X'Y = X'X W'
        weight = weight_matrix(c.work.get_submodule(name))
        torch.testing.assert_close(s.cross, s.gram @ weight.T, rtol=1e-5, atol=1e-5)
