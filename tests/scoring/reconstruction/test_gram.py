"""Gram statistics: the rows and weights reproduce each consumer, and statistics add up."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gfsprune.scoring.reconstruction import gram, shifted
from gfsprune.scoring.reconstruction.gram import (
    WELL_POSED,
    ConsumerStats,
    UndescribedConsumer,
    collect_stats,
    input_padding,
    outputs,
    positions,
    unsupported,
    weight_matrix,
)
from tests.launch import torchrun
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


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", MODULES)
def test_sampled_rows_are_those_rows_of_all(name: str) -> None:
    torch.manual_seed(0)
    module, shape = MODULES[name]
    x = torch.randn(shape)
    with torch.no_grad():
        y = module(x)
    every, targets = positions(module, x), outputs(module, y)
    rows = torch.tensor([0, 3, every.shape[0] - 1])
    torch.testing.assert_close(positions(module, x, rows=rows), every[rows], rtol=0, atol=0)
    torch.testing.assert_close(outputs(module, y, rows), targets[rows], rtol=0, atol=0)


class SamePadding(nn.Conv2d):
    """TensorFlow's "SAME" padding done in forward (as EfficientNet's and timm's Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        ph = max((-(-h // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - h, 0)
        pw = max((-(-w // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class Standardized(nn.Conv2d):
    """Weight standardisation: the stored weights are not the ones applied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("side", [7, 8])
def test_a_subclass_padding_like_tensorflow_is_described(side: int) -> None:
    torch.manual_seed(0)
    module = SamePadding(3, 4, 3, stride=2)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        y = module(x)
    pad = input_padding(module, x, y)
    got = positions(module, x.double(), pad) @ weight_matrix(module).T
    torch.testing.assert_close(got, outputs(module, y).double(), rtol=1e-5, atol=1e-5)


def test_a_subclass_that_changes_its_weights_is_refused() -> None:
    torch.manual_seed(0)
    module = Standardized(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = module(x)
    assert unsupported(module) is None  # a Conv2d: checked on its first batch instead
    with pytest.raises(UndescribedConsumer, match="Standardized"):
        input_padding(module, x, y)


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


def test_the_fold_holds_the_even_numbered_batches_where_rows_are_few() -> None:
    c = CASES["fan"]()
    whole = collect_stats(c.work, c.unpruned, c.consumers, c.batches, folds=True)
    even = collect_stats(c.work, c.unpruned, c.consumers, c.batches[::2])
    for name, stats in whole.items():
        assert stats.rows < WELL_POSED * stats.gram.shape[0]  # the case is under-determined
        assert stats.fold is not None and stats.fold.rows == even[name].rows < stats.rows
        for key in ("gram", "cross", "energy"):
            torch.testing.assert_close(getattr(stats.fold, key), getattr(even[name], key))
            rest = getattr(stats.rest(), key)
            torch.testing.assert_close(rest, getattr(stats, key) - getattr(even[name], key))
    one = collect_stats(c.work, c.unpruned, c.consumers, c.batches[:1], folds=True)
    assert all(s.fold is None for s in one.values())
    unasked = collect_stats(c.work, c.unpruned, c.consumers, c.batches)
    assert all(s.fold is None for s in unasked.values())


@pytest.mark.parametrize(("rows", "most", "kept"), [(40, 4, False), (10, 4, True), (10, 3, False)])
def test_well_posed_or_large_statistics_keep_no_fold(
    rows: int, most: int, kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gram, "MAX_CROSS_VALIDATED", most)
    model = nn.Sequential(nn.Linear(3, 2)).eval()  # 4 unknowns per output
    batches = [(torch.randn(rows // 2, 3), None) for _ in range(2)]
    assert (collect_stats(model, model, ["0"], batches, folds=True)["0"].fold is not None) == kept


@pytest.mark.parametrize(("blocks", "inputs"), [(1, 6), (3, 6), (2, 6), (1, 1100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_statistics_are_the_float64_sums_of_the_rows(
    dtype: torch.dtype, blocks: int, inputs: int
) -> None:
    torch.manual_seed(0)
    length = 1500 if blocks == 2 else 300 // blocks  # long blocks are read in place
    x = torch.randn(blocks, inputs, length, dtype=dtype) + 3
    y = torch.randn(blocks, 2, length, dtype=dtype)
    stats = ConsumerStats.zeros(nn.Linear(inputs, 2), torch.device("cpu"))
    stats.add(x, y)  # 1,100 inputs: a Gram in blocks of 512 columns
    rows = x.transpose(1, 2).reshape(-1, inputs)
    rows = torch.cat([rows, torch.ones(blocks * length, 1, dtype=dtype)], 1)
    rows, targets = rows.double(), y.transpose(1, 2).reshape(-1, 2).double()
    # float32 rows: products in float32, sums in float64; each entry within 1e-6 of its
    # Cauchy-Schwarz bound (the norms of its two columns)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for got, a, b in ((stats.gram, rows, rows), (stats.cross, rows, targets)):
        bound = a.norm(dim=0)[:, None] * b.norm(dim=0)[None]
        assert ((got - a.T @ b).abs() <= tol * bound).all()
    torch.testing.assert_close(stats.energy, targets.pow(2).sum(0), rtol=1e-12, atol=0)
    assert stats.gram.dtype == torch.float64 and stats.rows == blocks * length


def test_statistics_are_the_same_whichever_products_sum_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = CASES["fan"]()  # its dilated grouped consumer has stride 1, the others not
    calls = []
    add_shifted = shifted.add_shifted
    monkeypatch.setattr(shifted, "add_shifted", lambda *a: calls.append(1) or add_shifted(*a))
    both = {}
    for choice in (True, False):
        monkeypatch.setattr(gram, "_shifted_is_cheaper", lambda *_a, choice=choice: choice)
        both[choice] = collect_stats(c.work, c.unpruned, c.consumers, c.batches)
    assert len(calls) == len(c.batches)  # the dilated consumer, once per batch
    by_shift, unfolded = both[True], both[False]
    for name, stats in unfolded.items():
        assert by_shift[name].rows == stats.rows
        for key in ("gram", "cross", "energy"):  # float32 products, summed in another order
            want = getattr(stats, key)
            scale = float(want.abs().max())
            torch.testing.assert_close(
                getattr(by_shift[name], key), want, rtol=1e-6, atol=1e-6 * scale
            )


def test_sampled_statistics_sum_the_drawn_rows_of_both_networks_alike() -> None:
    c = CASES["fan"]()
    whole = collect_stats(c.work, c.unpruned, c.consumers, c.batches)
    again = collect_stats(c.work, c.unpruned, c.consumers, c.batches, rows=5)
    sampled = collect_stats(c.work, c.unpruned, c.consumers, c.batches, rows=5)
    for name, stats in sampled.items():
        calls = whole[name].rows // len(c.batches)  # rows per batch
        assert stats.rows == len(c.batches) * min(5, calls) < whole[name].rows
        for key in ("gram", "cross", "energy"):  # the same draw every time
            torch.testing.assert_close(getattr(stats, key), getattr(again[name], key))
    # where the unpruned network is the pruned one, the targets are the drawn rows' own
    # outputs: the draw is the same on both sides
    for name, s in collect_stats(c.work, c.work, c.consumers, c.batches, rows=5).items():
        weight = weight_matrix(c.work.get_submodule(name))
        torch.testing.assert_close(s.cross, s.gram @ weight.T, rtol=1e-5, atol=1e-5)


def test_the_unpruned_network_may_be_the_pruned_one() -> None:
    c = CASES["fan"]()
    stats = collect_stats(c.work, c.work, c.consumers, c.batches)
    for name, s in stats.items():
        # the targets are the consumers' own outputs: X'Y = X'X W'
        weight = weight_matrix(c.work.get_submodule(name))
        torch.testing.assert_close(s.cross, s.gram @ weight.T, rtol=1e-5, atol=1e-5)


# Run by torchrun in each of two processes: each gathers its share of the batches (every
# second one) and the sums are all-reduced; each saves what it holds.
WORKER = textwrap.dedent(
    """
    import sys

    import torch

    from gfsprune import distributed
    from gfsprune.scoring.reconstruction.gram import collect_stats

    assert distributed.setup()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3, stride=2)
    ).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 6, 6, generator=g), None) for _ in range(5)]
    stats = collect_stats(model, model, ["2"], batches, folds=True)["2"]
    held = {k: getattr(stats, k) for k in ("gram", "cross", "energy", "rows")}
    held |= {f"fold_{k}": getattr(stats.fold, k) for k in ("gram", "cross", "energy", "rows")}
    torch.save(held, f"{sys.argv[1]}/rank{distributed.rank()}.pt")
    distributed.barrier()
    distributed.teardown()
    """
)


def test_two_processes_hold_the_statistics_of_one_pass(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 6, 6, generator=g), None) for _ in range(5)]
    single = collect_stats(model.eval(), model, ["2"], batches, folds=True)["2"]
    for rank in (0, 1):
        shared = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert shared["rows"] == single.rows
        assert shared["fold_rows"] == single.fold.rows
        for key in ("gram", "cross", "energy"):
            torch.testing.assert_close(shared[key], getattr(single, key))
            torch.testing.assert_close(shared[f"fold_{key}"], getattr(single.fold, key))
