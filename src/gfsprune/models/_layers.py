"""Building blocks shared by the zoo: conv+BN+activation, inverted residuals, initialisation.

Every block is made of modules (no functional activations, nothing in-place) so that
Torch-Pruning can trace the channel dependencies through it.
"""

from __future__ import annotations

import torch
from torch import nn

from gfsprune.errors import ConfigError

Activation = type[nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``.

    The rounding rule of the MobileNet papers' reference code, so that width multipliers give
    the published channel counts.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# Widest multiplier accepted: 16x a zoo model is already far past any machine's training
# budget, and 1e6 asked for petabytes before failing in the allocator (issue 28).
_MAX_WIDTH_MULT = 16


def check_width_mult(model: str, width_mult: float) -> None:
    """Raise ``ConfigError`` unless ``width_mult`` is a number in (0, 16]."""
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not 0 < width_mult <= _MAX_WIDTH_MULT
    ):
        raise ConfigError(
            f"{model} width_mult must be a float in (0, {_MAX_WIDTH_MULT}], got {width_mult!r}; "
            "use e.g. 1.0 or 0.5"
        )


def scale_channels(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to an integer, at least 4 (ResNets, VGG, digits CNN).

    Every base count in the zoo is at least 16, so ``width_mult=1.0`` keeps it unchanged.
    """
    return max(4, round(channels * width_mult))


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias, 'same' padding) -> ``BatchNorm2d`` -> optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        activation: Activation | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention of MobileNetV3: pool, 1x1 conv down, ReLU, 1x1 conv up, hard sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))  # (B, C, 1, 1)
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: 1x1 expand, kxk depthwise, optional SE, 1x1 linear projection.

    The expansion conv is left out when ``hidden_channels == in_channels`` and the identity
    shortcut is added when the block keeps the shape (stride 1, same channel count).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        activation: Activation,
        se_channels: int = 0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden_channels != in_channels:
            layers.append(ConvBNAct(in_channels, hidden_channels, 1, activation=activation))
        layers.append(
            ConvBNAct(
                hidden_channels,
                hidden_channels,
                kernel_size,
                stride=stride,
                groups=hidden_channels,
                activation=activation,
            )
        )
        if se_channels:
            layers.append(SqueezeExcite(hidden_channels, se_channels))
        layers.append(ConvBNAct(hidden_channels, out_channels, 1, activation=None))
        self.body = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        # use_shortcut is fixed at construction, so this branch does not depend on the data.
        return x + out if self.use_shortcut else out


def check_image_size(model: str, image_size: int, *, halvings: int, fix: str) -> None:
    """Raise ``ConfigError`` unless ``image_size`` survives ``halvings`` 2x2 max pools."""
    minimum = 2**halvings
    if image_size < minimum:
        raise ConfigError(
            f"{model} needs image_size >= {minimum} (its feature map halves {halvings}x), "
            f"got {image_size}; {fix}"
        )


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, N(0, 0.01) linears; drawn from the caller's torch seed."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
