"""VGG-16 with batch norm (Simonyan & Zisserman, 2015), in its usual CIFAR form: the 13 conv
layers of the original, then a small two-layer classifier on the flattened feature map."""

from __future__ import annotations

import torch
from torch import nn

from gfsprune.models._layers import (
    ConvBNAct,
    check_image_size,
    check_width_mult,
    init_weights,
    scale_channels,
)

# Output channels of each 3x3 conv+BN+ReLU; "M" is a 2x2 max pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features`` (convs and pools), flatten, ``classifier`` (Linear-ReLU-Linear)."""

    def __init__(
        self, *, num_classes: int, in_channels: int, image_size: int, width_mult: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for spec in _VGG16:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                out_channels = scale_channels(spec, width_mult)
                layers.append(ConvBNAct(channels, out_channels, 3))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        hidden = scale_channels(512, width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(channels * size * size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))  # (B, num_classes)


def vgg16_bn(
    *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width_mult: float = 1.0
) -> VGG:
    """CIFAR VGG-16-BN: 13 conv+BN+ReLU layers, 5 max pools, Linear(512 * s * s, 512), Linear.

    ``s = image_size // 32`` is the side of the last feature map, so ``image_size`` must be
    at least 32. ``width_mult`` scales the convs' and the hidden Linear's widths
    (``max(4, round(c * width_mult))``).

    Example:
        >>> vgg16_bn(num_classes=10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_image_size(
        "vgg16_bn",
        image_size,
        halvings=5,
        fix="resize the images or use a model with global pooling such as resnet20",
    )
    check_width_mult("vgg16_bn", width_mult)
    return VGG(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width_mult=width_mult,
    )
