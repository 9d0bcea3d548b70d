"""Label-free distillation: zero loss against itself, teacher outputs on the fly for any input
nesting, and greedy selection by it beats random channels at the same widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gfsprune import Macs, PruneConfig, distill, prune
from gfsprune.core.losses import DistillLoss
from gfsprune.errors import ConfigError, ModelError
from gfsprune.surgery import prune_channels
from tests.nets import Chain


def _images(count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 2, 5, 5, generator=g) for _ in range(count)]


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A Chain fitted to a fixed random rule of its inputs (three classes)."""
    torch.manual_seed(0)
    net = Chain(width=12, classes=3)
    rule = torch.randn(2 * 5 * 5, 3, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for x in _images(150, seed=2):
        loss = F.cross_entropy(net(x), (x.flatten(1).relu() @ rule).argmax(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize(("kind", "temperature"), [("kl", 1.0), ("kl", 4.0), ("mse", 1.0)])
def test_the_unpruned_model_as_teacher_gives_zero_loss(trained, kind, temperature) -> None:
    data, loss_fn = distill(trained, _images(3, seed=3), kind=kind, temperature=temperature)
    with torch.no_grad():
        for _ in range(2):  # re-iterable
            losses = [float(loss_fn(trained(x), y)) for x, y in data]
            assert losses == pytest.approx([0.0] * 3, abs=1e-6)
        other = trained(_images(1, seed=4)[0])
        assert float(loss_fn(other, next(iter(data))[1])) > 1e-3


def test_targets_are_the_frozen_teachers_outputs_for_any_input_nesting() -> None:
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor, *, shift: torch.Tensor) -> torch.Tensor:
            return self.fc(x + shift)

    net = Keywords()
    x, shift = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.zeros(5, dtype=torch.long)
    data, _ = distill(net, [({"x": x, "shift": shift}, labels)], labelled=True)
    expected = net(x, shift=shift).detach()
    with torch.no_grad():
        net.fc.weight.add_(1.0)  # the teacher is a copy made by distill
    ((inputs, targets),) = list(data)
    assert set(inputs) == {"x", "shift"}
    torch.testing.assert_close(targets, expected)
    assert not targets.requires_grad

    tuples, _ = distill(nn.Bilinear(3, 3, 2), [(x, shift)])
    ((inputs, targets),) = list(tuples)
    assert inputs == (x, shift) and targets.shape == (5, 2)


def test_greedy_selection_by_distillation_beats_random_channels(trained) -> None:
    example = torch.zeros(1, 2, 5, 5)
    data, loss_fn = distill(trained, _images(8, seed=5))
    result = prune(
        trained,
        data,
        example,
        target=Macs(0.5),
        loss_fn=loss_fn,
        config=PruneConfig(candidates=None, seed=0),
        progress=False,
    )
    held_out, _ = distill(trained, _images(4, seed=6))

    def kl(model: nn.Module) -> float:
        with torch.no_grad():
            return sum(float(loss_fn(model(x), y)) for x, y in held_out) / 4

    g = torch.Generator().manual_seed(7)
    random = [
        kl(
            prune_channels(
                trained,
                example,
                {
                    p.name: torch.randperm(p.width, generator=g)[: len(p.kept)].tolist()
                    for p in result.plan
                },
            )
        )
        for _ in range(3)
    ]
    assert kl(result.model) < sum(random) / len(random)


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="'kind' must be 'kl' or 'mse'. Got 'l1'"):
        DistillLoss("l1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'temperature' must be a positive number. Got 0"):
        DistillLoss("kl", 0)
    with pytest.raises(ConfigError, match="kind='kl' only"):
        DistillLoss("mse", 2.0)
    with pytest.raises(ModelError, match=r"differ in shape"):
        DistillLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_alpha_mixes_cross_entropy_on_the_labels_with_the_distillation(trained) -> None:
    images = _images(2, seed=5)
    labels = [
        torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(i)) for i in (0, 1)
    ]
    data, loss_fn = distill(
        trained, list(zip(images, labels, strict=True)), temperature=2.0, labelled=True, alpha=0.3
    )
    student = Chain(width=12, classes=3)
    (x, targets), y = next(iter(data)), labels[0]
    assert targets.shape == (32, 4) and torch.equal(targets[:, -1].long(), y)
    out = student(x)
    soft = DistillLoss("kl", 2.0)(out, trained(x))
    expected = 0.3 * F.cross_entropy(out, y) + 0.7 * soft
    torch.testing.assert_close(loss_fn(out, targets), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, r"'alpha' must be a number in \[0, 1\]"),
        ({"kind": "mse", "alpha": 0.5}, r"'alpha' .* applies to kind='kl' only"),
    ],
)
def test_bad_alpha_is_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillLoss(**options)


def test_alpha_needs_labelled_batches(trained) -> None:
    with pytest.raises(ConfigError, match=r"keep_labels=True needs labelled batches"):
        distill(trained, _images(1, seed=0), alpha=0.5)
