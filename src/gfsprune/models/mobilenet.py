"""Mobile networks built from inverted residual blocks: MobileNetV2 (Sandler et al., 2018),
MobileNetV3-Small (Howard et al., 2019) and ProxylessNAS-Mobile (Cai et al., ICLR 2019).

Each takes ``small_input``: the stem and the first downsampling block keep stride 1, so a
32x32 input ends at 4x4 instead of 1x1 (the usual CIFAR adaptation); parameters are unchanged.
Each takes ``width_mult``: every channel count is scaled and rounded to a multiple of 8 with
``make_divisible``, as in the papers' reference code (torchvision's for MobileNetV3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from gfsprune.models._layers import (
    Activation,
    ConvBNAct,
    InvertedResidual,
    check_width_mult,
    init_weights,
    make_divisible,
)


class MobileNet(nn.Module):
    """``features`` (stem, inverted residuals, 1x1 head conv), global pooling, ``classifier``."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = classifier
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))  # (B, C)
        return self.classifier(x)  # (B, num_classes)


class _Block(NamedTuple):
    """One inverted residual block: its kernel, hidden (expanded) and output channels, stride."""

    kernel: int
    hidden: int
    out: int
    stride: int
    activation: Activation
    se_channels: int = 0


def _strides(strides: list[int], *, small_input: bool) -> list[int]:
    """The layers' strides, with the first two stride-2 layers set to 1 when ``small_input``."""
    if not small_input:
        return strides
    kept = 0
    out = []
    for stride in strides:
        if stride == 2 and kept < 2:
            stride, kept = 1, kept + 1
        out.append(stride)
    return out


def _expanded(
    in_channels: int, table: Sequence[tuple[int, int, int, int]], activation: Activation
) -> list[_Block]:
    """Blocks from (kernel, expansion ratio, output channels, stride) rows."""
    blocks = []
    for kernel, expansion, out, stride in table:
        blocks.append(_Block(kernel, in_channels * expansion, out, stride, activation))
        in_channels = out
    return blocks


def _mobile_net(
    blocks: Sequence[_Block],
    classifier: nn.Sequential,
    *,
    in_channels: int,
    stem_channels: int,
    head_channels: int,
    activation: Activation,
    small_input: bool,
) -> MobileNet:
    """3x3 stride-2 stem, the blocks, 1x1 head conv (stem and head use ``activation``)."""
    stem_stride, *strides = _strides(
        [2] + [block.stride for block in blocks], small_input=small_input
    )
    layers: list[nn.Module] = [
        ConvBNAct(in_channels, stem_channels, 3, stride=stem_stride, activation=activation)
    ]
    channels = stem_channels
    for block, stride in zip(blocks, strides, strict=True):
        layers.append(
            InvertedResidual(
                channels,
                block.hidden,
                block.out,
                kernel_size=block.kernel,
                stride=stride,
                activation=block.activation,
                se_channels=block.se_channels,
            )
        )
        channels = block.out
    layers.append(ConvBNAct(channels, head_channels, 1, activation=activation))
    return MobileNet(nn.Sequential(*layers), classifier)


def _last_channels(width_mult: float) -> int:
    """The 1280-channel head of MobileNetV2 and ProxylessNAS: it grows with ``width_mult > 1``
    but is kept for ``width_mult <= 1``, as in both papers' reference code."""
    return make_divisible(1280 * max(1.0, width_mult))


# MobileNetV2, Table 2 of the paper: (expansion t, output channels c, repeats n, first stride s).
_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    small_input: bool = False,
) -> MobileNet:
    """MobileNetV2 (ReLU6 inverted residuals; 3.5M params at 1000 classes, width 1.0).

    Example:
        >>> mobilenet_v2(num_classes=10, small_input=True)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_width_mult("mobilenet_v2", width_mult)
    table = [
        (3, t, make_divisible(c * width_mult), s if i == 0 else 1)
        for t, c, n, s in _V2_STAGES
        for i in range(n)
    ]
    stem_channels = make_divisible(32 * width_mult)
    head_channels = _last_channels(width_mult)
    return _mobile_net(
        _expanded(stem_channels, table, nn.ReLU6),
        nn.Sequential(nn.Dropout(0.2), nn.Linear(head_channels, num_classes)),
        in_channels=in_channels,
        stem_channels=stem_channels,
        head_channels=head_channels,
        activation=nn.ReLU6,
        small_input=small_input,
    )


def _se(channels: int) -> int:
    """MobileNetV3's squeeze width: a quarter of the expanded channels, rounded to 8."""
    return make_divisible(channels // 4)


# MobileNetV3-Small, Table 2 of the paper: (kernel, expanded channels, output channels, stride,
# activation, squeeze-excitation).
_V3_SMALL_TABLE = (
    (3, 16, 16, 2, nn.ReLU, True),
    (3, 72, 24, 2, nn.ReLU, False),
    (3, 88, 24, 1, nn.ReLU, False),
    (5, 96, 40, 2, nn.Hardswish, True),
    (5, 240, 40, 1, nn.Hardswish, True),
    (5, 240, 40, 1, nn.Hardswish, True),
    (5, 120, 48, 1, nn.Hardswish, True),
    (5, 144, 48, 1, nn.Hardswish, True),
    (5, 288, 96, 2, nn.Hardswish, True),
    (5, 576, 96, 1, nn.Hardswish, True),
    (5, 576, 96, 1, nn.Hardswish, True),
)


def mobilenet_v3_small(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    small_input: bool = False,
) -> MobileNet:
    """MobileNetV3-Small (squeeze-excitation, hardswish; 2.5M params at 1000 classes, width 1.0).

    As in torchvision, ``width_mult`` also scales the classifier's hidden 1024 units, and the
    head conv has 6x the last block's channels (576 at width 1.0).

    Example:
        >>> model = mobilenet_v3_small(num_classes=10, width_mult=0.25, small_input=True)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_width_mult("mobilenet_v3_small", width_mult)
    blocks = []
    for kernel, hidden, out, stride, activation, squeeze in _V3_SMALL_TABLE:
        hidden = make_divisible(hidden * width_mult)
        blocks.append(
            _Block(
                kernel,
                hidden,
                make_divisible(out * width_mult),
                stride,
                activation,
                _se(hidden) if squeeze else 0,
            )
        )
    head_channels = 6 * blocks[-1].out
    classifier_channels = make_divisible(1024 * width_mult)
    classifier = nn.Sequential(
        nn.Linear(head_channels, classifier_channels),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(classifier_channels, num_classes),
    )
    return _mobile_net(
        blocks,
        classifier,
        in_channels=in_channels,
        stem_channels=make_divisible(16 * width_mult),
        head_channels=head_channels,
        activation=nn.Hardswish,
        small_input=small_input,
    )


# ProxylessNAS-Mobile as released by its authors (proxyless_mobile): (kernel, expansion,
# output channels, stride). The search chose "zero" (identity) for the last two blocks of the
# 32-channel stage; an identity block has no parameters, so they are left out.
_PROXYLESS_MOBILE_TABLE = (
    (3, 1, 16, 1),
    (5, 3, 32, 2),
    (3, 3, 32, 1),
    (7, 3, 40, 2),
    (3, 3, 40, 1),
    (5, 3, 40, 1),
    (5, 3, 40, 1),
    (7, 6, 80, 2),
    (5, 3, 80, 1),
    (5, 3, 80, 1),
    (5, 3, 80, 1),
    (5, 6, 96, 1),
    (5, 3, 96, 1),
    (5, 3, 96, 1),
    (5, 3, 96, 1),
    (7, 6, 192, 2),
    (7, 6, 192, 1),
    (7, 3, 192, 1),
    (7, 3, 192, 1),
    (7, 6, 320, 1),
)


def proxylessnas_mobile(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    small_input: bool = False,
) -> MobileNet:
    """ProxylessNAS-Mobile (ReLU6 MBConv blocks, kernels 3/5/7, expansion 1/3/6; 4.1M params).

    Like MobileNetV2, the 1280-channel head is not narrowed by ``width_mult < 1``.
    """
    check_width_mult("proxylessnas_mobile", width_mult)
    table = [
        (kernel, expansion, make_divisible(out * width_mult), stride)
        for kernel, expansion, out, stride in _PROXYLESS_MOBILE_TABLE
    ]
    stem_channels = make_divisible(32 * width_mult)
    head_channels = _last_channels(width_mult)
    return _mobile_net(
        _expanded(stem_channels, table, nn.ReLU6),
        nn.Sequential(nn.Linear(head_channels, num_classes)),
        in_channels=in_channels,
        stem_channels=stem_channels,
        head_channels=head_channels,
        activation=nn.ReLU6,
        small_input=small_input,
    )
