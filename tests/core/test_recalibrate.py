"""BatchNorm recalibration: the data's statistics, weights and modes untouched, rollback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune import recalibrate_bn
from gfsprune.errors import DataError, ModelError
from tests.nets import Chain, randomize_norms


def _batches(count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 2, 5, 5, generator=g) * 3 + 1 for _ in range(count)]


def test_statistics_are_the_average_over_the_batches() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net[1].momentum = 0.3
    batches = _batches(5)
    assert recalibrate_bn(net, batches, num_batches=4) == 4
    with torch.no_grad():
        outputs = [net[0](x) for x in batches[:4]]  # (16, 4, 3, 3) each
    means = torch.stack([o.mean((0, 2, 3)) for o in outputs]).mean(0)
    variances = torch.stack([o.var((0, 2, 3)) for o in outputs]).mean(0)  # unbiased, per batch
    torch.testing.assert_close(net[1].running_mean, means)
    torch.testing.assert_close(net[1].running_var, variances)
    assert net[1].momentum == 0.3
    assert all(m.training for m in net.modules())  # the modes it had


def test_no_parameter_changes_and_eval_modes_are_kept() -> None:
    net = randomize_norms(Chain())
    before = {k: v.clone() for k, v in net.named_parameters()}
    stats = net.b2.running_mean.clone()
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in _batches(3)]
    recalibrate_bn(net, pairs, labelled=True)
    for name, value in net.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert not any(m.training for m in net.modules())
    assert not torch.allclose(net.b2.running_mean, stats)


def test_the_order_of_the_batches_does_not_matter() -> None:
    first, second = randomize_norms(Chain()), randomize_norms(Chain())
    second.load_state_dict(first.state_dict())
    batches = _batches(4)
    recalibrate_bn(first, batches)
    recalibrate_bn(second, batches[::-1])
    torch.testing.assert_close(first.state_dict(), second.state_dict())


def test_refusals_leave_the_statistics_as_they_were() -> None:
    net = randomize_norms(Chain())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(DataError, match="yielded no mini-batch"):
        recalibrate_bn(net, [])
    with pytest.raises(DataError, match=r"\(inputs, labels\) mini-batches; got a Tensor"):
        recalibrate_bn(net, _batches(2), labelled=True)
    torch.testing.assert_close(net.state_dict(), before, rtol=0, atol=0)
    with pytest.raises(ModelError, match="no BatchNorm"):
        recalibrate_bn(nn.Linear(2, 2), _batches(1))
    with pytest.raises(ValueError, match="'num_batches' must be a positive integer. Got 0"):
        recalibrate_bn(net, _batches(1), num_batches=0)
