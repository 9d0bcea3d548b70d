"""Models written the way users and tutorials write them (issue 28): each prunes with every
evaluator, the physically pruned model computing what the masked one did (``prune`` checks
it), or is refused in one line naming the module and the operation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gfsprune import Macs, PruneConfig, prune
from gfsprune.errors import GfsPruneError
from gfsprune.scoring import EVALUATORS

_SHAPE = (3, 8, 8)
_CLASSES = 4


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class ViewHead(nn.Module):
    """The tutorial CNN: ``nn.Sequential`` blocks, then ``x.view(x.size(0), -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, 8), nn.MaxPool2d(2), _block(8, 8), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 2 * 2, _CLASSES)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


class ReshapeHead(ViewHead):
    def forward(self, x):
        x = self.features(x)
        return self.fc(x.reshape(x.shape[0], -1))


class FlattenHead(ViewHead):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.fc(self.flatten(self.features(x)))


class Functional(nn.Module):
    """``F.relu``, ``F.max_pool2d``, ``F.adaptive_avg_pool2d`` instead of modules."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, _CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.c2(x)), 1)
        return self.fc(torch.flatten(x, 1))


class InPlace(nn.Module):
    """``ReLU(inplace=True)``, ``relu_()`` and an in-place residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.a, self.b = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        x = self.stem(x)
        y = self.b(self.a(x).relu_())
        y += x
        return self.fc(y.mean((2, 3)))


class DictOutput(Functional):
    def forward(self, x):
        return {"logits": super().forward(x), "input_mean": x.mean()}


class TupleOutput(Functional):
    def forward(self, x):
        logits = super().forward(x)
        return logits, logits.softmax(1)


class ShapeControl(nn.Module):
    """Python control flow on the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = _block(3, 8), _block(8, 8)
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        x = self.c1(x)
        if x.shape[-1] > 4:
            x = F.max_pool2d(x, 2)
        return self.fc(self.c2(x).mean((2, 3)))


class Shared(nn.Module):
    """One block applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared = _block(3, 8), _block(8, 8)
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        x = self.shared(self.shared(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class Looped(nn.Module):
    """``nn.ModuleList`` run in a loop, a dropout and an ``Identity`` left in."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_block(3, 8), _block(8, 6), _block(6, 8)])
        self.drop, self.skip = nn.Dropout(0.5), nn.Identity()
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.fc(self.drop(self.skip(x).mean((2, 3))))


class Normalising(nn.Module):
    """Normalises its input itself, with buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.body = nn.Sequential(_block(3, 8), _block(8, 8))
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        x = (x - self.mean) / self.std
        return self.fc(self.body(x).mean((2, 3)))


class BatchCat(nn.Module):
    """Test-time augmentation: the input and its mirror image concatenated along the batch,
    the two halves' logits averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, 8), _block(8, 8))
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        n = x.shape[0]
        both = self.fc(self.body(torch.cat([x, x.flip(-1)])).mean((2, 3)))
        return (both[:n] + both[n:]) / 2


class BatchStatistics(nn.Module):
    """Standardises its features with statistics over the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, 8), _block(8, 8))
        self.fc = nn.Linear(8, _CLASSES)

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        return self.fc((h - h.mean(0)) / (h.std(0) + 1e-3))


class RecurrentHead(nn.Module):
    """Convolutions, then an LSTM or GRU over the columns of the feature map."""

    def __init__(self, rnn: type[nn.RNNBase]) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, 8), _block(8, 8))
        self.rnn = rnn(8, 6, batch_first=True)
        self.fc = nn.Linear(6, _CLASSES)

    def forward(self, x):
        seq = self.body(x).mean(2).transpose(1, 2)  # (B, W, C)
        out, _ = self.rnn(seq)
        return self.fc(out[:, -1])


def _first(output):
    if isinstance(output, dict):
        return output["logits"]
    return output[0] if isinstance(output, tuple) else output


def _loss(output, targets):
    return F.cross_entropy(_first(output), targets)


PRUNED = {
    "view": ViewHead,
    "reshape": ReshapeHead,
    "flatten": FlattenHead,
    "functional": Functional,
    "in-place": InPlace,
    "dict": DictOutput,
    "tuple": TupleOutput,
    "shape-control": ShapeControl,
    "shared": Shared,
    "module-list": Looped,
    "normalising": Normalising,
    "batch-cat": BatchCat,
    "batch-statistics": BatchStatistics,
    "lstm": lambda: RecurrentHead(nn.LSTM),
    "gru": lambda: RecurrentHead(nn.GRU),
    "data-parallel": lambda: nn.DataParallel(Functional()),
}


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(6, *_SHAPE, generator=g), torch.randint(0, _CLASSES, (6,), generator=g))
        for _ in range(3)
    ]


def _prune(model: nn.Module, evaluator: str | None):
    """``model`` pruned by the network loss through ``evaluator`` (``None``: the default
    options, the reconstruction objective)."""
    data = _data()
    config = PruneConfig(candidates=2, schedule="fast")
    if evaluator is not None:
        config = PruneConfig(objective="loss", candidates=2, evaluator=evaluator, schedule="fast")
    return prune(
        model, data, data[0][0][:2], target=Macs(0.5), config=config, loss_fn=_loss, progress=False
    )


@pytest.mark.parametrize("name", PRUNED)
def test_every_user_model_prunes_with_every_evaluator_to_the_same_plan(name: str) -> None:
    torch.manual_seed(0)
    model = PRUNED[name]().eval()
    x = _data(1)[0][0]
    results = {evaluator: _prune(model, evaluator) for evaluator in [*EVALUATORS, None]}
    plans = {evaluator: r.plan for evaluator, r in results.items()}
    assert plans["batched"] == plans["naive"]
    for result in results.values():
        assert result.macs_after < result.macs_before
        assert _first(result.model(x)).shape == (x.shape[0], _CLASSES)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_torchscript_module_is_refused_in_one_line() -> None:
    scripted = torch.jit.script(Functional().eval())
    with pytest.raises(GfsPruneError, match="TorchScript") as caught:
        _prune(scripted, "batched")
    assert "\n" not in str(caught.value)
