"""Residual networks (He et al., 2016): the CIFAR family (ResNet-20/56) and the ImageNet family
(ResNet-18/34/50).

Shortcuts that change shape are 1x1 conv + BN projections ("option B") in both families, so
that every residual addition is a plain traced ``add`` whose channels Torch-Pruning can couple.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn

from gfsprune.models._layers import ConvBNAct, check_width_mult, init_weights, scale_channels


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else a strided 1x1 conv + BN projection."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ConvBNAct(in_channels, out_channels, 1, stride=stride, activation=None)


class _ResidualBlock(nn.Module):
    """``ReLU(body(x) + shortcut(x))``; subclasses build ``body`` and ``shortcut``."""

    body: nn.Sequential
    shortcut: nn.Module
    act: nn.ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class BasicBlock(_ResidualBlock):
    """Two 3x3 conv+BN layers with a shortcut; ReLU after the addition."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, *, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(in_channels, width, 3, stride=stride),
            ConvBNAct(width, width, 3, activation=None),
        )
        self.shortcut = _shortcut(in_channels, width, stride)
        self.act = nn.ReLU()


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision's "v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, *, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.body = nn.Sequential(
            ConvBNAct(in_channels, width, 1),
            ConvBNAct(width, width, 3, stride=stride),
            ConvBNAct(width, out_channels, 1, activation=None),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = nn.ReLU()


class ResNet(nn.Module):
    """A stem, stages of residual blocks (stride 2 at the start of every stage but the first),
    global average pooling and a linear classifier."""

    def __init__(
        self,
        stem: nn.Sequential,
        block: type[BasicBlock | Bottleneck],
        *,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        in_channels = widths[0]
        stages = []
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(in_channels, width, stride=stride))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, C, H', W')
        return self.fc(self.flatten(self.pool(x)))  # (B, num_classes)


def _scaled_widths(model: str, widths: tuple[int, ...], width_mult: float) -> tuple[int, ...]:
    check_width_mult(model, width_mult)
    return tuple(scale_channels(width, width_mult) for width in widths)


def _cifar_resnet(depth: int, *, num_classes: int, in_channels: int, width_mult: float) -> ResNet:
    # 6n + 2 layers: a 3x3 stem, 3 stages of n BasicBlocks, the classifier.
    blocks_per_stage = (depth - 2) // 6
    widths = _scaled_widths(f"resnet{depth}", (16, 32, 64), width_mult)
    return ResNet(
        nn.Sequential(ConvBNAct(in_channels, widths[0], 3)),
        BasicBlock,
        widths=widths,
        depths=(blocks_per_stage,) * 3,
        num_classes=num_classes,
    )


# The ImageNet family by depth: block type and blocks per stage (He et al. 2016, Table 1).
_IMAGENET_STAGES: Mapping[int, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]] = (
    MappingProxyType(
        {
            18: (BasicBlock, (2, 2, 2, 2)),
            34: (BasicBlock, (3, 4, 6, 3)),
            50: (Bottleneck, (3, 4, 6, 3)),
        }
    )
)


def _imagenet_resnet(
    depth: int, *, num_classes: int, in_channels: int, width_mult: float
) -> ResNet:
    block, depths = _IMAGENET_STAGES[depth]
    widths = _scaled_widths(f"resnet{depth}", (64, 128, 256, 512), width_mult)
    stem = nn.Sequential(
        ConvBNAct(in_channels, widths[0], 7, stride=2),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    return ResNet(stem, block, widths=widths, depths=depths, num_classes=num_classes)


def resnet20(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> ResNet:
    """CIFAR ResNet-20 (3 stages of 16/32/64 channels, 3 BasicBlocks each; ~0.27M params).

    ``width_mult`` scales every hidden channel count (``max(4, round(c * width_mult))``); the
    same holds for every ResNet here.

    Example:
        >>> resnet20(num_classes=10, width_mult=0.25)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _cifar_resnet(
        20, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )


def resnet56(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> ResNet:
    """CIFAR ResNet-56 (3 stages of 16/32/64 channels, 9 BasicBlocks each; ~0.86M params)."""
    return _cifar_resnet(
        56, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )


def resnet18(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0) -> ResNet:
    """ImageNet ResNet-18 (7x7 stem + max pool, BasicBlocks 2-2-2-2; 11.7M params at 1000 classes).

    Adaptive pooling makes it run on any input size, 32x32 included.
    """
    return _imagenet_resnet(
        18, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )


def resnet34(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0) -> ResNet:
    """ImageNet ResNet-34 (BasicBlocks 3-4-6-3; 21.8M params at 1000 classes)."""
    return _imagenet_resnet(
        34, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0) -> ResNet:
    """ImageNet ResNet-50 (Bottlenecks 3-4-6-3; 25.6M params at 1000 classes)."""
    return _imagenet_resnet(
        50, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult
    )
