"""The batched evaluator's speed-ups fall back to what a user's model accepts (issue 28)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gfsprune
from gfsprune.scoring import BatchedEvaluator, NaiveEvaluator
from gfsprune.surgery import Masks, find_layers


class ViewNet(nn.Module):
    """The issue's ten-line MNIST-style CNN: ``x.view(x.size(0), -1)`` before the linear
    layer fails on a channels-last activation."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class BatchMixer(nn.Module):
    """Standardises a hidden activation with statistics over the whole batch, so stacked
    candidates would read each other's samples."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h))
        h = (h - h.mean()) / (h.std() + 1e-5)
        return self.fc(h.mean((2, 3)))


def _scores(net: nn.Module, shape: tuple[int, ...], classes: int):
    """Batched and naive losses for every layer of ``net`` on one batch."""
    torch.manual_seed(0)
    x, y = torch.randn(8, *shape), torch.randint(0, classes, (8,))
    layers = find_layers(net, x[:1])[0]
    out = []
    with Masks(net, layers) as masks:
        batched = BatchedEvaluator(net, masks, F.cross_entropy)
        naive = NaiveEvaluator(net, masks, F.cross_entropy)
        for layer in layers:
            keep = (torch.rand(3, layer.width) > 0.5).float()
            out.append((batched(x, y, layer, keep), naive(x, y, layer, keep)))
    return batched, out


def test_a_view_head_is_scored_in_its_own_memory_format_and_said_once(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gfsprune"):
        evaluator, scores = _scores(ViewNet().eval(), (1, 28, 28), 10)
    for fast, plain in scores:
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert not evaluator._channels_last and not evaluator._plain
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "own memory format" in lines[0] and "view size" in lines[0]


def test_the_view_model_prunes_with_default_options() -> None:
    torch.manual_seed(0)
    net = ViewNet().eval()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    default = gfsprune.prune(net, [(x, y)], x[:1], target=gfsprune.Macs(0.5), progress=False)
    assert default.macs_ratio == pytest.approx(0.5, abs=0.05)
    assert default.model(x).shape == (16, 10)
    # The network loss's batched scoring falls back, to the naive evaluator's plan.
    result, naive = (
        gfsprune.prune(
            net,
            [(x, y)],
            x[:1],
            target=gfsprune.Macs(0.5),
            config=gfsprune.PruneConfig(objective="loss", evaluator=evaluator),
            progress=False,
        )
        for evaluator in ("batched", "naive")
    )
    assert [p.kept for p in result.plan] == [p.kept for p in naive.plan]
    torch.testing.assert_close(result.model(x), naive.model(x))


def test_a_model_mixing_the_batch_is_scored_one_candidate_at_a_time(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gfsprune"):
        evaluator, scores = _scores(BatchMixer().eval(), (3, 6, 6), 4)
    for fast, plain in scores:
        torch.testing.assert_close(fast, plain)
    assert evaluator._plain
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "one plain forward pass per candidate" in lines[0]


class _Interrupting(nn.Module):
    """Interrupts (as Ctrl-C would) the first time its forward is replaced."""

    armed = False

    def __setattr__(self, name, value):
        if name == "forward" and type(self).armed:
            type(self).armed = False
            raise KeyboardInterrupt
        super().__setattr__(name, value)


class _Stage(_Interrupting, nn.Sequential):
    pass


def test_ctrl_c_while_the_prefix_is_patched_stays_an_interrupt() -> None:
    net = nn.Sequential(
        _Stage(nn.Conv2d(3, 4, 3), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()),
        nn.Flatten(),
        nn.LazyLinear(2),
    ).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))
    net(x)
    layers = find_layers(net, x[:1])[0]
    with Masks(net, layers) as masks:
        evaluator = BatchedEvaluator(net, masks, F.cross_entropy)
        layer = layers[-1]
        keep = torch.ones(2, layer.width)
        evaluator(x, y, layer, keep)  # the prefix of the last layer is recorded
        _Interrupting.armed = True
        with pytest.raises(KeyboardInterrupt):
            evaluator(x, y, layer, keep)
    assert all("forward" not in vars(m) for m in evaluator._net.modules())
