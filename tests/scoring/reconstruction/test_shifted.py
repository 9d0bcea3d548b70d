"""Shifted products: a stride-1 convolution's statistics equal its unfolded rows' sums."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gfsprune.scoring.reconstruction import gram, shifted
from gfsprune.scoring.reconstruction.gram import ConsumerStats, outputs, positions

SHIFTED = {
    "3x3": (nn.Conv2d(4, 6, 3, padding=1), (3, 4, 7, 8)),
    "wide-dilated-reflect": (
        nn.Conv2d(4, 6, (2, 3), padding=(1, 2), dilation=(1, 2), padding_mode="reflect"),
        (3, 4, 7, 8),
    ),
    "valid-grouped": (nn.Conv2d(4, 6, 3, groups=2), (3, 4, 7, 8)),
    "5x5-no-bias": (nn.Conv2d(3, 4, 5, padding=2, bias=False), (2, 3, 6, 5)),
    "conv1d-circular": (
        nn.Conv1d(3, 5, 3, padding=2, dilation=2, padding_mode="circular"),
        (3, 3, 9),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", SHIFTED)
def test_shifted_products_are_the_sums_of_the_unfolded_rows(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    module, shape = SHIFTED[name]
    module = copy.deepcopy(module).to(dtype)
    x = torch.randn(shape, dtype=dtype) + 1
    x[..., -1] = 0  # a column and a row of zeros: their frames' products are skipped
    if x.dim() == 4:
        x[..., 1, :] = 0
    with torch.no_grad():
        y = module(x)
    stats = ConsumerStats.zeros(module, torch.device("cpu"))
    padded, kernel, dilation, _ = gram._padded(module, x, None)
    frames = shifted.frames(padded, kernel, dilation)
    shifted.add_shifted(stats, padded, y.unsqueeze(2) if y.dim() == 3 else y, frames)
    rows, targets = positions(module, x).double(), outputs(module, y).double()
    # float32: products in float32, each entry within 1e-6 of its Cauchy-Schwarz bound
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for got, a, b in ((stats.gram, rows, rows), (stats.cross, rows, targets)):
        bound = a.norm(dim=0)[:, None] * b.norm(dim=0)[None]
        assert ((got - a.T @ b).abs() <= tol * bound).all()
    torch.testing.assert_close(stats.energy, targets.pow(2).sum(0), rtol=1e-12, atol=0)
    assert stats.rows == rows.shape[0]


def test_shifted_products_are_taken_where_they_multiply_less() -> None:
    def cheaper(module: nn.Module, shape: tuple) -> bool:
        padded, kernel, dilation, _ = gram._padded(module, torch.ones(shape), None)
        return gram._shifted_is_cheaper(module, padded, shifted.frames(padded, kernel, dilation))

    assert cheaper(nn.Conv2d(64, 64, 3, padding=1), (8, 64, 56, 56))  # 13 products, not 81
    assert not cheaper(nn.Conv2d(64, 64, 1), (8, 64, 56, 56))  # one tap: nothing shared
    # a small map in reflect padding: every row and column of its frames multiplied
    assert not cheaper(nn.Conv2d(512, 512, 3, padding=1, padding_mode="reflect"), (8, 512, 3, 3))
