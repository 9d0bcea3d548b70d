"""A tiny CNN for the 8x8 scikit-learn digits: the zoo's model for tests and quick demos."""

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


class DigitsCNN(nn.Module):
    """conv 3x3 -> 16, conv 3x3 -> 32 (times ``width_mult``; BN + ReLU), 2x2 max pool, Linear."""

    def __init__(
        self, *, num_classes: int, in_channels: int, image_size: int, width_mult: float
    ) -> None:
        super().__init__()
        first, second = (scale_channels(c, width_mult) for c in (16, 32))
        self.features = nn.Sequential(
            ConvBNAct(in_channels, first, 3),
            ConvBNAct(first, second, 3),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.flatten = nn.Flatten()
        side = image_size // 2
        self.fc = nn.Linear(second * side * side, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.features(x)))  # (B, num_classes)


def digits_cnn(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width_mult: float = 1.0
) -> DigitsCNN:
    """The digits CNN (about 10k parameters for 8x8 inputs); trains to >95% in seconds on CPU.

    ``width_mult`` scales the two convs' widths (``max(4, round(c * width_mult))``).

    Example:
        >>> digits_cnn()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    check_image_size(
        "digits_cnn", image_size, halvings=1, fix="pass the side of the square input images"
    )
    check_width_mult("digits_cnn", width_mult)
    return DigitsCNN(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width_mult=width_mult,
    )
