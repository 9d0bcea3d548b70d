"""The model zoo: every model builds, trains, is pruned by Torch-Pruning, and is the real one."""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch
import torch_pruning as tp
from sklearn.datasets import load_digits
from torch import nn

from gfsprune import models
from gfsprune.errors import ConfigError

ZOO = models.names()
MOBILE = ["mobilenet_v2", "mobilenet_v3_small", "proxylessnas_mobile"]
# Their width is all conv channels, so width_mult=0.25 keeps about 1/16 of the parameters.
CONV_DOMINATED = ["resnet18", "resnet20", "resnet34", "resnet50", "resnet56", "vgg16_bn"]


def _image_size(name: str) -> int:
    return 8 if name == "digits_cnn" else 32


def _build(
    name: str,
    *,
    num_classes: int = 7,
    in_channels: int = 2,
    seed: int = 0,
    width_mult: float = 1.0,
) -> nn.Module:
    torch.manual_seed(seed)
    return models.get(
        name,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=_image_size(name),
        width_mult=width_mult,
    )


def _inputs(name: str, *, in_channels: int = 2) -> torch.Tensor:
    size = _image_size(name)
    return torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(1))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _hidden_widths(model: nn.Module) -> list[int]:
    """Output widths of every conv and Linear but the classifier's output, in module order."""
    widths = [
        m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return widths[:-1]


def _group_count(model: nn.Module, x: torch.Tensor) -> int:
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return len(list(graph.get_all_groups(ignored_layers=[_last_linear(model)])))


def test_names_lists_the_whole_zoo_sorted() -> None:
    assert ZOO == [
        "digits_cnn",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "proxylessnas_mobile",
        "resnet18",
        "resnet20",
        "resnet34",
        "resnet50",
        "resnet56",
        "vgg16_bn",
    ]


@pytest.mark.parametrize("name", ZOO)
def test_forward_backward_respect_num_classes_and_in_channels(name: str) -> None:
    model = _build(name, num_classes=7, in_channels=2)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
    assert list(model.modules())[-1] is _last_linear(model)
    assert _last_linear(model).out_features == 7

    out = model(_inputs(name, in_channels=2))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# All families share one initialiser, so one model per family is enough here.
@pytest.mark.parametrize("name", ["digits_cnn", "resnet20", "mobilenet_v3_small", "vgg16_bn"])
def test_init_follows_the_torch_seed(name: str) -> None:
    model, same, other = _build(name, seed=0), _build(name, seed=0), _build(name, seed=1)
    torch.testing.assert_close(model.state_dict(), same.state_dict())
    assert not torch.equal(_last_linear(model).weight, _last_linear(other).weight)


@pytest.mark.parametrize("name", ZOO)
def test_eval_is_deterministic_and_l1_pruning_at_half_width_keeps_a_working_model(
    name: str,
) -> None:
    model = _build(name).eval()
    x = _inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    before = _count(model)
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[_last_linear(model)],
    )
    pruner.step()
    assert _count(model) < 0.5 * before
    assert _last_linear(model).out_features == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "num_classes", "expected", "rel"),
    [
        # He et al. 2016, Table 6 (option-A shortcuts); option B adds ~1k-3k projection weights.
        ("resnet20", 10, 0.27e6, 0.02),
        ("resnet56", 10, 0.85e6, 0.02),
        # The published ImageNet architectures, exact counts.
        ("resnet18", 1000, 11_689_512, 0),
        ("resnet34", 1000, 21_797_672, 0),
        ("resnet50", 1000, 25_557_032, 0),
        ("mobilenet_v2", 1000, 3_504_872, 0),
        ("mobilenet_v3_small", 1000, 2_542_856, 0),
        # Cai et al. 2019 report 4.1M for ProxylessNAS-Mobile.
        ("proxylessnas_mobile", 1000, 4_080_512, 0),
    ],
)
def test_parameter_counts_match_the_published_architectures(
    name: str, num_classes: int, expected: float, rel: float
) -> None:
    model = models.get(name, num_classes=num_classes, in_channels=3)
    assert _count(model) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "proxylessnas_mobile"])
def test_small_input_keeps_a_4x4_map_at_32x32_with_the_same_parameters(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    imagenet = models.get(name, num_classes=10)
    cifar = models.get(name, num_classes=10, small_input=True)
    assert imagenet.features(x).shape[-2:] == (1, 1)
    assert cifar.features(x).shape[-2:] == (4, 4)
    assert _count(cifar) == _count(imagenet)


@pytest.mark.parametrize("name", ZOO)
def test_quarter_width_shrinks_the_model_which_forwards_and_builds_a_dependency_graph(
    name: str,
) -> None:
    full, quarter = _build(name), _build(name, width_mult=0.25)
    ratio = _count(quarter) / _count(full)
    if name in CONV_DOMINATED:
        assert ratio == pytest.approx(1 / 16, rel=0.1)
    else:  # a larger share of the parameters sits in the classifier (or a kept 1280 head)
        assert ratio < 0.2
    x = _inputs(name)
    out = quarter(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert all(p.grad is not None for p in quarter.parameters())
    full_groups, quarter_groups = _group_count(full.eval(), x), _group_count(quarter.eval(), x)
    if name in MOBILE:
        # Rounding to 8 can make a stride-1 block's input and output widths equal (V2's 32->16
        # becomes 8->8), which adds its identity shortcut and couples two groups into one.
        assert 0 < quarter_groups <= full_groups
    else:
        assert quarter_groups == full_groups


@pytest.mark.parametrize("name", [n for n in ZOO if n not in MOBILE])
def test_width_mult_scales_every_hidden_width_of_resnets_vgg_and_digits(name: str) -> None:
    full, quarter = _build(name), _build(name, width_mult=0.25)
    assert _hidden_widths(quarter) == [max(4, round(w * 0.25)) for w in _hidden_widths(full)]
    assert min(_hidden_widths(_build(name, width_mult=0.01))) == 4


@pytest.mark.parametrize("name", MOBILE)
def test_width_mult_rounds_mobile_widths_to_multiples_of_8(name: str) -> None:
    full, quarter = _build(name), _build(name, width_mult=0.25)
    pairs = list(zip(_hidden_widths(quarter), _hidden_widths(full), strict=True))
    # "<=": a squeeze-excitation width can sit at the floor of 8 already at width 1.0.
    assert all(small % 8 == 0 and small <= big for small, big in pairs[:-1])
    assert sum(small for small, _ in pairs) < 0.4 * sum(big for _, big in pairs)
    # The last hidden width is MobileNetV2's and ProxylessNAS's 1280-channel head, which the
    # reference code keeps for width_mult <= 1, or MobileNetV3's scaled classifier layer.
    assert pairs[-1] == ((1280, 1280) if name != "mobilenet_v3_small" else (256, 1024))


@pytest.mark.parametrize("name", ZOO)
def test_width_mult_must_be_positive(name: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^{name} width_mult must be a float in \(0, 16\], got 0; use e\.g\. 1"
    ):
        models.get(name, width_mult=0)


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, 1e6, True, "0.5"])
def test_width_mult_rejects_non_positive_or_non_numbers(value: object) -> None:
    with pytest.raises(ConfigError, match=rf"resnet20 width_mult .* got {value!r};"):
        models.get("resnet20", width_mult=value)


def test_vgg16_bn_classifier_follows_image_size() -> None:
    model = models.get("vgg16_bn", num_classes=10, image_size=64)
    assert model.classifier[0].in_features == 512 * 2 * 2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(
        ConfigError,
        match=r"vgg16_bn needs image_size >= 32 \(its feature map halves 5x\), got 16",
    ):
        models.get("vgg16_bn", image_size=16)


def test_digits_cnn_reaches_95_percent_on_digits_in_20_epochs() -> None:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1350], order[1350:]
    torch.manual_seed(0)
    model = models.get("digits_cnn")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    shuffle = torch.Generator().manual_seed(0)
    for _ in range(20):
        model.train()
        for batch in train[torch.randperm(len(train), generator=shuffle)].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.95


def test_get_drops_image_size_for_globally_pooled_models() -> None:
    model = models.get("resnet20", num_classes=3, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_name_gives_close_matches_and_lists_the_zoo() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown model 'resnet21'; did you mean resnet20, .*choose one of dig"
    ) as info:
        models.get("resnet21")
    assert "\n" not in str(info.value)


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'resnet20' has no option 'small_input'; "
        r"its options are num_classes, in_channels, width_mult$",
    ):
        models.get("resnet20", small_input=True)


@pytest.mark.parametrize(
    ("key", "value"), [("num_classes", 0), ("in_channels", 2.0), ("image_size", True)]
)
def test_sizes_must_be_positive_integers(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be a positive integer, got {value!r}"):
        models.get("digits_cnn", **{key: value})


def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_external_source_that_does_not_import_gives_one_clear_line(package: str) -> None:
    if _importable(package):
        pytest.skip(f"{package} imports here")
    with pytest.raises(ConfigError, match=rf"^{package} is not importable here \(") as info:
        models.get(f"{package}:resnet18", num_classes=10)
    assert "use a zoo model: digits_cnn, " in str(info.value)
    assert "\n" not in str(info.value)


def _fake_package(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: object) -> None:
    """Make ``import name`` return a stand-in module with ``attributes``."""
    module = types.ModuleType(name)
    for attribute, value in attributes.items():
        setattr(module, attribute, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_torchvision_source_passes_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []

    def get_model(name: str, **kwargs: object) -> nn.Module:
        calls.append((name, kwargs))
        return nn.Linear(2, 2)

    names = lambda module: ["resnet18"]  # noqa: E731
    fake = types.SimpleNamespace(get_model=get_model, list_models=names)
    _fake_package(monkeypatch, "torchvision", models=fake)
    models.get("torchvision:resnet18", num_classes=10, image_size=32, zero_init_residual=True)
    assert calls == [("resnet18", {"weights": None, "num_classes": 10, "zero_init_residual": True})]
    with pytest.raises(ConfigError, match=r"torchvision models take 3 input channels, got"):
        models.get("torchvision:resnet18", in_channels=1)


def test_timm_source_maps_in_channels_and_checks_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list = []

    def create_model(name: str, **kwargs: object) -> nn.Module:
        calls.append((name, kwargs))
        return nn.Linear(2, 2)

    _fake_package(
        monkeypatch,
        "timm",
        create_model=create_model,
        is_model=lambda name: name == "resnet18",
        list_models=lambda: ["resnet18"],
    )
    models.get("timm:resnet18", num_classes=10, in_channels=1)
    assert calls == [("resnet18", {"pretrained": False, "in_chans": 1, "num_classes": 10})]
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet81'; did you mean resnet18?"):
        models.get("timm:resnet81")


def test_available_lists_the_zoo_by_pattern_and_refuses_unknown_sources() -> None:
    assert models.available() == models.names()
    assert models.available("zoo", "resnet5*") == ["resnet50", "resnet56"]
    assert models.available("zoo", "nothing*") == []
    with pytest.raises(ConfigError, match="unknown model source 'hub'"):
        models.available("hub")


def test_gfsprune_models_prints_one_name_per_line(capsys) -> None:
    from gfsprune.workflow.cli import main

    assert main(["models", "mobilenet*"]) == 0
    assert capsys.readouterr().out.split() == ["mobilenet_v2", "mobilenet_v3_small"]
