"""An interrupted prune resumes to the uninterrupted result, whichever layer it stopped
after (issue 28: a resumed run gave other widths from the next layer on)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gfsprune import Macs, PruneConfig, Tolerance, prune
from gfsprune.core.stream import BatchStream
from gfsprune.core.tuning import LayerTuning
from tests.nets import Coupled, randomize_norms

_prune_module = importlib.import_module("gfsprune.core.prune")  # the package exports a function


class _Flipped(Dataset):
    """Random images whose horizontal flip is drawn from torch's global generator, as
    torchvision's augmentations are."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randn(40, 3, 4, 4, generator=g),
            torch.randint(0, 4, (40,), generator=g),
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        flip = bool(torch.rand(()) < 0.5)
        return (self.x[i].flip(-1) if flip else self.x[i]), self.y[i]


def _run(config: PruneConfig, target, checkpoint=None, stop_after: int | None = None):
    torch.manual_seed(0)
    model = randomize_norms(Coupled())
    # shuffled from torch's global generator, a new order each pass (8 batches of 5)
    data = DataLoader(_Flipped(), batch_size=5, shuffle=True)
    x = torch.randn(1, 3, 4, 4)
    if stop_after is None:
        return prune(
            model, data, x, target=target, config=config, checkpoint=checkpoint, progress=False
        )
    real, written = _prune_module.write_progress, []

    def write_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        written.append(1)
        if len(written) == stop_after:
            raise KeyboardInterrupt  # as Ctrl-C right after the layer's progress was saved

    _prune_module.write_progress = write_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            prune(
                model, data, x, target=target, config=config, checkpoint=checkpoint, progress=False
            )
    finally:
        _prune_module.write_progress = real
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "target"),
    [
        (PruneConfig(candidates=3, refit=True), Macs(0.5)),  # the curves allocator
        (PruneConfig(candidates=3, refit=True, allocator="uniform", schedule="exact"), Macs(0.5)),
        (PruneConfig(candidates=None, refit=True, schedule="fast"), Macs(0.4)),
        (PruneConfig(candidates=3, tuning=LayerTuning(steps=2)), Tolerance(0.05)),
    ],
    ids=["curves", "uniform-exact", "fast", "tolerance-tuning"],
)
def test_a_prune_interrupted_after_any_layer_resumes_to_the_same_result(
    config, target, tmp_path
) -> None:
    straight = _run(config, target)
    expected = straight.model.state_dict()
    for k in range(1, len(straight.plan)):
        state = tmp_path / f"after{k}.json"
        _run(config, target, state, stop_after=k)
        resumed = _run(config, target, state)
        assert resumed.plan == straight.plan, f"stopped after layer {k}"
        got = resumed.model.state_dict()
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(got[name], value), f"{name}, stopped after layer {k}"


def test_a_seeded_stream_draws_the_same_batches_whatever_is_drawn_in_between() -> None:
    data = DataLoader(_Flipped(), batch_size=5, shuffle=True)
    cpu = torch.device("cpu")
    alone = BatchStream(data, cpu, seed=3, name="main")
    expected = [alone.next() for _ in range(20)]
    torch.manual_seed(0)
    main, other = BatchStream(data, cpu, seed=3, name="main"), BatchStream(data, cpu, seed=3)
    main.skip_to(7)
    got, mine = [], []
    for _ in range(13):
        other.next()
        mine.append(torch.rand(()))  # the caller's own draws
        got.append(main.next())
    for batch, want in zip(got, expected[7:], strict=True):
        torch.testing.assert_close(batch, want, rtol=0, atol=0)
    torch.manual_seed(0)
    assert torch.equal(torch.stack(mine), torch.rand(13))  # the caller's generator untouched
    assert not torch.equal(BatchStream(data, cpu, seed=3).next()[0], expected[0][0])
