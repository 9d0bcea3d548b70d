"""Items of layers read or written by grouped convolutions: every group keeps the same
offsets, masking equals removal, and plans of whole items replay exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gfsprune
from gfsprune import PruneConfig, Widths, prune
from gfsprune.errors import ConfigError, ModelError
from gfsprune.surgery import Masks, find_layers, prune_channels
from tests.nets import GroupedBlock, randomize_norms


@pytest.fixture
def block() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_norms(GroupedBlock()), torch.randn(3, 3, 6, 6)


def test_grouped_convolution_layers_are_selected_in_offsets(block) -> None:
    model, x = block
    layers = {layer.name: layer for layer in find_layers(model, x)[0]}
    offsets = ((0, 4, 8), (1, 5, 9), (2, 6, 10), (3, 7, 11))
    # c1 feeds the grouped convolution, which writes c2's layer: both in offsets of groups.
    assert layers["c1"].items == offsets and layers["c2"].items == offsets
    assert layers["c1"].n_items == 4 and layers["c1"].item_size == 3
    assert layers["stem"].items is None and layers["stem"].n_items == 8
    assert layers["c2"].channels([3, 0]) == [3, 7, 11, 0, 4, 8]
    assert layers["c2"].items_of([4, 11]) == [0, 3]


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_masked_grouped_network_equals_physically_pruned_one(block, scale: float) -> None:
    model, x = block
    layers, _ = find_layers(model, x)
    by_name = {layer.name: layer for layer in layers}
    kept = {"c1": by_name["c1"].channels([2]), "c2": by_name["c2"].channels([3, 0]), "stem": [1]}
    with Masks(model, layers) as masks, torch.no_grad():
        for layer in layers:
            masks.set(layer, kept[layer.name], scale)
        masked = model(x)
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, scale))
    assert pruned.c2.groups == 3 and tuple(pruned.c2.weight.shape[:2]) == (6, 1)
    torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_a_plan_that_splits_an_item_is_refused(block) -> None:
    model, x = block
    with pytest.raises(ModelError, match=r"'c2' is kept or removed in items of 3 channels"):
        prune_channels(model, x, {"c2": [0, 4]})


def test_grouped_network_is_pruned_to_whole_items_and_reloads(block, tmp_path) -> None:
    model, x = block
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(6, 3, 6, 6, generator=g), torch.randint(0, 4, (6,), generator=g))] * 2
    result = prune(model, data, x[:1], target=gfsprune.Macs(0.6), progress=False)
    kept = {p.name: p.kept for p in result.plan}
    for name in ("c1", "c2"):
        assert len(kept[name]) % 3 == 0
        assert sorted(kept[name]) == sorted({c % 4 + 4 * g for c in kept[name] for g in range(3)})
    assert result.model(x).shape == (3, 4)
    gfsprune.save(result, tmp_path)
    loaded = gfsprune.load(tmp_path, GroupedBlock())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))


def test_widths_of_a_grouped_layer_must_be_whole_items(block) -> None:
    model, x = block
    data = [(torch.randn(6, 3, 6, 6), torch.randint(0, 4, (6,)))]
    with pytest.raises(ConfigError, match="'c2' is selected in items of 3 channels.*Got 4"):
        prune(model, data, x[:1], target=Widths({"c2": 4}), progress=False)
    result = prune(
        model, data * 8, x[:1], target=Widths({"c2": 6}), config=PruneConfig(), progress=False
    )
    assert len(result.plan[[p.name for p in result.plan].index("c2")].kept) == 6
