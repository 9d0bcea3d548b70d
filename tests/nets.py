"""Tiny networks shared by the tests (generated weights, no downloads)."""

from __future__ import annotations

import torch
from torch import nn


class Coupled(nn.Module):
    """A residual add, a concatenation feeding a depthwise convolution, and a flatten."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.dw, self.b3 = nn.Conv2d(14, 14, 3, padding=1, groups=14), nn.BatchNorm2d(14)
        self.c4 = nn.Conv2d(14, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.b1(self.c1(x)))
        b = torch.relu(self.b2(self.c2(a))) + a  # residual add couples c1 and c2
        c = torch.cat([b, self.c3(b)], 1)  # concat, then a depthwise conv over both parts
        d = torch.relu(self.b3(self.dw(c)))
        return self.fc(torch.flatten(self.c4(d), 1))


class Chain(nn.Module):
    """conv-BN-ReLU twice and a classifier: two independent channel layers."""

    def __init__(self, width: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class GroupedBlock(nn.Module):
    """A ResNeXt-like bottleneck: 1x1, grouped 3x3 (3 groups of 4), 1x1, residual add."""

    def __init__(self, width: int = 12, groups: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.stem, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, width, 1), nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.b2 = nn.BatchNorm2d(width)
        self.c3, self.b3 = nn.Conv2d(width, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b0(self.stem(x)))
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        return self.fc(torch.relu(self.b3(self.c3(y)) + x).mean((2, 3)))


def tiny_vit(**options) -> nn.Module:
    """A timm VisionTransformer on 16x16 inputs (patches of 8, 4 heads of 6 channels, two
    blocks, 5 classes) in eval mode, seeded; ``options`` override any of these. Needs timm."""
    from timm.models.vision_transformer import VisionTransformer

    settings = dict(
        img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5
    )
    torch.manual_seed(0)
    return VisionTransformer(**{**settings, **options}).eval()


class PartialConv(nn.Module):
    """FasterNet's partial convolution: split the channels into parts of fixed sizes (2, 6),
    convolve the first, concatenate them back; then a 1x1 convolution and a classifier."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.pc = nn.Conv2d(2, 2, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b0(self.c0(x)))
        a, b = torch.split(x, [2, 6], dim=1)  # b is used nearer the output than a
        x = torch.cat((self.pc(a), b), dim=1)
        return self.fc(torch.relu(self.b1(self.c1(x))).mean((2, 3)))


class Fan(nn.Module):
    """One layer (``c0``, 8 channels) read by three consumers: a strided convolution with
    reflect padding and a BatchNorm after it, a dilated grouped convolution (2 groups: the
    layer's items are channel pairs), and a linear layer on the flattened, pooled map; a
    classifier reads all three."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.s = nn.Conv2d(8, 6, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
        self.bs = nn.BatchNorm2d(6)
        self.g = nn.Conv2d(8, 4, 3, padding=2, dilation=2, groups=2)
        self.fc = nn.Linear(32, 5)
        self.head = nn.Linear(15, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.b0(self.c0(x)))
        u = torch.relu(self.bs(self.s(a))).mean((2, 3))
        v = self.g(a).mean((2, 3))
        w = self.fc(nn.functional.adaptive_avg_pool2d(a, 2).flatten(1))
        return self.head(torch.cat([u, v, w], 1))
