"""Channel layers, masks and physical pruning agree with each other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune.errors import ModelError
from gfsprune.surgery import (
    Masks,
    batchnorm_after,
    build_graph,
    find_layers,
    fold_batchnorms,
    prune_channels,
)
from tests.nets import Chain, Coupled, randomize_norms


@pytest.fixture
def coupled() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_norms(Coupled()), torch.randn(3, 3, 4, 4)


def test_coupled_channels_form_one_layer_in_input_order(coupled) -> None:
    model, x = coupled
    layers, skipped = find_layers(model, x)
    assert skipped == []
    # The residual stream (c1, c2), c3 and the depthwise conv are joined by add + concat.
    assert [(layer.name, layer.width) for layer in layers] == [("dw", 14), ("c4", 5)]
    producers = {p.name: p.root for p in layers[0].producers}
    assert producers["c1"] == tuple(range(8)) and producers["c3"] == tuple(range(8, 14))
    assert {c.name for c in layers[0].consumers} == {"c2", "c3", "c4"}
    assert layers[0].segments == [tuple(range(8)), tuple(range(8, 14))]
    fc = next(c for c in layers[1].consumers if c.name == "fc")
    assert fc.root.tolist() == [i // 16 for i in range(80)]  # flatten maps channel -> 16 features


@pytest.mark.parametrize("into", ["batchnorm", "weights"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_masked_network_equals_physically_pruned_one(coupled, scale: float, into: str) -> None:
    model, x = coupled
    layers, _ = find_layers(model, x)
    kept = {"dw": [0, 2, 9, 13], "c4": [1, 3]}
    with Masks(model, layers) as masks:
        for layer in layers:
            masks.set(layer, kept[layer.name], scale)
        with torch.no_grad():
            masked = model(x)
    norms = batchnorm_after(model, build_graph(model, x)) if into == "batchnorm" else None
    pruned = prune_channels(model, x, kept, scales=dict.fromkeys(kept, scale), norms=norms)
    assert pruned.c1.out_channels == 2 and pruned.c3.out_channels == 2 and pruned.dw.groups == 4
    assert pruned.fc.in_features == 2 * 16
    torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    assert model.c1.out_channels == 8  # the original is untouched
    # c2 reads only the rescaled residual stream and feeds only b2: given that pair
    # its weights stay as they were and b2 holds the factor; c3 has no BatchNorm after it.
    c2 = model.c2.weight[[0, 2]][:, [0, 2]]  # its outputs are the residual stream too
    folded = 1.0 if into == "batchnorm" else scale
    torch.testing.assert_close(pruned.c2.weight, c2 * folded)
    c3 = model.c3.weight[[1, 5]][:, [0, 2]]  # its outputs are channels 8..13 of the layer
    torch.testing.assert_close(pruned.c3.weight, c3 * scale)


def test_rescale_in_batchnorm_keeps_the_function_of_a_biased_convolution() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(Chain(width=8)), torch.randn(4, 2, 5, 5)
    layers, _ = find_layers(model, x)
    kept = {"c1": [0, 3, 5], "c2": [1, 2, 4, 6]}
    scales = {"c1": 8 / 3, "c2": 2.0}
    with Masks(model, layers) as masks:
        for layer in layers:
            masks.set(layer, kept[layer.name], scales[layer.name])
        with torch.no_grad():
            masked = model(x)
    norms = batchnorm_after(model, build_graph(model, x))
    assert norms == {"c1": "b1", "c2": "b2"}
    pruned = prune_channels(model, x, kept, scales=scales, norms=norms)
    torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.c2.bias, model.c2.bias[[1, 2, 4, 6]] / scales["c1"])
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, [1, 2, 4, 6]] * 2.0)
    # In training mode the BatchNorm normalises by the batch: the pruned model then computes
    # what the unscaled (rescale=False) one does.
    plain = prune_channels(model, x, kept, scales={"c2": 2.0}, norms=norms)
    torch.testing.assert_close(pruned.train()(x), plain.train()(x), rtol=1e-4, atol=1e-5)


def test_masks_are_removed_on_exit(coupled) -> None:
    model, x = coupled
    layers, _ = find_layers(model, x)
    with torch.no_grad():
        before = model(x)
        with Masks(model, layers) as masks:
            masks.set(layers[0], [0], 1.0)
            assert not torch.allclose(model(x), before)
        torch.testing.assert_close(model(x), before)


def test_candidate_rows_mask_each_copy_of_the_batch(coupled) -> None:
    model, x = coupled
    layers, _ = find_layers(model, x)
    keep = torch.zeros(3, 14)
    keep[0, :4], keep[1, 5:], keep[2, [1, 12]] = 1.0, 2.0, 3.0
    with Masks(model, layers) as masks, torch.no_grad():
        with masks.candidates(layers[0], keep):
            together = model(x.repeat(3, 1, 1, 1))
        for row in range(3):
            with masks.candidates(layers[0], keep[row : row + 1]):
                torch.testing.assert_close(together[3 * row : 3 * row + 3], model(x))


class ForkedNorm(nn.Module):
    """conv -> BN -> ReLU -> conv whose output feeds a BN and a skip add: the second BN
    must stay (folding it would change the skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(torch.relu(self.b1(self.c1(x))))
        return (self.b2(y) + y).mean((2, 3))


@pytest.mark.parametrize("net", [Coupled, ForkedNorm])
def test_folded_copy_computes_the_same_function(net) -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(net()), torch.randn(3, 3, 4, 4)
    folded = fold_batchnorms(model, build_graph(model, x[:1]))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(folded.b1, nn.Identity) and isinstance(model.b1, nn.BatchNorm2d)
    if net is ForkedNorm:
        assert isinstance(folded.b2, nn.BatchNorm2d)  # its conv also feeds the add
    else:
        assert isinstance(folded.b2, nn.Identity) and isinstance(folded.b3, nn.Identity)


def test_masks_follow_an_attached_copy_and_can_be_suspended_or_bypassed(coupled) -> None:
    model, x = coupled
    layers, _ = find_layers(model, x)
    keep = torch.zeros(2, 14)
    keep[0, :3], keep[1, 4:9] = 1.0, 2.0
    with Masks(model, layers) as masks, torch.no_grad():
        masks.set(layers[1], [0, 2], 1.5)
        masked = model(x)
        with masks.suspended():
            full = model(x)
            folded = fold_batchnorms(model, build_graph(model, x[:1]))
        assert not torch.allclose(full, masked)
        torch.testing.assert_close(folded(x), full, rtol=1e-5, atol=1e-5)  # copied unhooked
        masks.attach(folded)
        torch.testing.assert_close(folded(x), masked, rtol=1e-5, atol=1e-5)  # masked once
        with masks.candidates(layers[0], keep, bypass=["c4"]):
            bypassed = model(x.repeat(2, 1, 1, 1))
        factors = masks.factors(layers[0], keep)
        assert factors["c4"].shape == (2, 14)
        assert factors["c2"][:, :8].tolist() == keep[:, :8].tolist()  # c2 reads the stream
        with masks.candidates(layers[0], keep[:1]):
            one = model(x)
        # c4 unmasked: differs from the masked candidate run
        assert not torch.allclose(bypassed[:3], one)
    with torch.no_grad():  # hooks on both networks removed on exit
        torch.testing.assert_close(folded(x), full, rtol=1e-5, atol=1e-5)


def test_prune_channels_refuses_unknown_layers_and_bad_indices() -> None:
    model, x = randomize_norms(Chain()), torch.randn(1, 2, 5, 5)
    with pytest.raises(ModelError, match=r"names layers \['nope'\]"):
        prune_channels(model, x, {"nope": [0]})
    with pytest.raises(ModelError, match="'c1' has 6 channels.*non-empty subset of 0..5"):
        prune_channels(model, x, {"c1": [7]})
    with pytest.raises(ModelError, match="'c1' has 6 channels here but 8 in the plan"):
        prune_channels(model, x, {"c1": [0]}, widths={"c1": 8})


def test_untraceable_model_gets_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x.tolist()

    with pytest.raises(ModelError, match="could not trace Branchy"):
        find_layers(Branchy(), -torch.ones(1, 1, 2, 2))


def test_classifier_and_ignored_groups_are_not_layers() -> None:
    model, x = randomize_norms(Chain()), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    assert [layer.name for layer in layers] == ["c1", "c2"]
    layers, _ = find_layers(model, x, ignore=[model.b2])
    assert [layer.name for layer in layers] == ["c1"]


def test_groups_through_channel_norms_are_skipped() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    layers, skipped = find_layers(model, torch.randn(1, 1, 1, 1))
    assert skipped == ["0 (it passes through a GroupNorm, which mixes its channels)"]
    assert [layer.name for layer in layers] == ["2"]


class _GainConv(nn.Conv2d):
    """A convolution with one more parameter per output channel (timm's ScaledStdConv2d)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.gain, self.bias)


def test_per_output_parameters_of_a_conv_subclass_are_cut_with_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        _GainConv(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(64, 2)
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    layers, _ = find_layers(model, x)
    with Masks(model, layers) as masks, torch.no_grad():
        masks.set(layers[0], [1, 4], 1.0)
        masked = model(x)
    pruned = prune_channels(model, x, {"0": [1, 4]})
    assert pruned[0].gain.shape == (2, 1, 1, 1) and isinstance(pruned[0].gain, nn.Parameter)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked)
