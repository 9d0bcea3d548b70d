from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune.scoring.reconstruction.gram import collect_stats
from gfsprune.scoring.reconstruction.passes import (
    Passes,
    call_counts,
    channels_last,
    takes_channels_last,
)


class Block(nn.Module):
    """A residual block that changes its input (the block before's output) in place."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mul_(0.5)
        return self.conv2(torch.relu(self.conv1(x))) + x


class Stem(nn.Conv2d):
    """Counts the passes that compute it (a replayed call returns its kept output)."""

    computed = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.computed += 1
        return super().forward(x)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4), Block(4), Block(4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


#: Consumers of successive layers, in the order a selection visits them.
LAYERS = [["blocks.0.conv1"], ["blocks.0.conv2"], ["blocks.1.conv1", "blocks.2.conv1"], ["fc"]]


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Chain().eval()
    batches = [(torch.randn(3, 3, 6, 6),) for _ in range(3)]
    return model, batches


def _walk(passes: Passes, batches, layers=LAYERS, between=None) -> list:
    """Each layer's consumers' calls on every batch, ``between(step)`` run after each."""
    seen = []
    for step, names in enumerate(layers):
        prefix = passes.prefix(names, batches[0][0])
        for index, (inputs,) in enumerate(batches):
            seen.append(passes.calls(prefix, index, inputs, names, None))
        if between is not None:
            between(step)
    return seen


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            for (xi, xo), (yi, yo) in zip(x[name], y[name], strict=True):
                torch.testing.assert_close(xi, yi, rtol=0, atol=0)
                torch.testing.assert_close(xo, yo, rtol=0, atol=0)


def test_resumed_passes_record_what_passes_from_the_input_do(setup) -> None:
    model, batches = setup
    plain = _walk(Passes(model), batches)
    model.stem.computed = 0
    resumed = _walk(Passes(model, budget=2**30), batches)
    _assert_same(resumed, plain)
    # the stem runs on the first layer's passes (and the two-sample structure passes, and
    # the check of the first resumed pass) only
    assert model.stem.computed == len(batches) + len(LAYERS) + 1


def test_nothing_is_kept_beyond_the_budget(setup) -> None:
    model, batches = setup
    _walk(Passes(model, budget=1), batches)
    assert model.stem.computed == len(batches) * len(LAYERS) + len(LAYERS)


def test_a_change_before_the_kept_outputs_is_not_replayed(setup) -> None:
    model, batches = setup
    factors = torch.ones(4)
    hooked = model.blocks[0].conv1

    def state(module: nn.Module) -> tuple[torch.Tensor, ...]:
        return (factors,) if module is hooked else ()

    hooked.register_forward_pre_hook(lambda _m, args: (args[0] * factors.view(-1, 1, 1),))

    def change(step: int) -> None:
        with torch.no_grad():
            if step == 1:
                model.stem.weight.mul_(0.5)  # in place: before every kept output
            if step == 2:
                factors[1] = 0.0  # what a hook reads, inside the first block
            if step == 3:
                model.stem.bias = nn.Parameter(model.stem.bias + 1)  # replaced

    torch.manual_seed(1)
    copy = Chain().eval()
    copy.load_state_dict(model.state_dict())
    resumed = _walk(Passes(model, budget=2**30, state=state), batches, between=change)
    factors.fill_(1.0)
    model.load_state_dict(copy.state_dict())
    plain = _walk(Passes(model), batches, between=change)
    _assert_same(resumed, plain)


def test_a_layer_before_the_kept_outputs_passes_from_the_input(setup) -> None:
    model, batches = setup
    backwards = [["blocks.2.conv1"], ["blocks.0.conv2"], ["fc"]]
    plain = _walk(Passes(model), batches, backwards)
    model.stem.computed = 0
    resumed = _walk(Passes(model, budget=2**30), batches, backwards)
    _assert_same(resumed, plain)
    # the second layer begins before the first's kept outputs end: from the input
    assert model.stem.computed == 2 * len(batches) + len(backwards) + 1


class Counting(nn.Module):
    """Adds how often it was called: its outputs differ from pass to pass."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return x + self.count


def test_passes_that_differ_from_passes_from_the_input_stop_resuming(setup) -> None:
    model, batches = setup
    model.blocks[1].conv1 = nn.Sequential(Counting(), model.blocks[1].conv1)
    layers = [["blocks.0.conv2"], ["blocks.1.conv1.1"], ["fc"]]
    passes = Passes(model, budget=2**30)
    _walk(passes, batches, layers)
    assert passes.budget == 0


def test_statistics_from_resumed_passes_equal_those_from_the_input(setup) -> None:
    model, batches = setup
    unpruned = Chain().eval()
    mine, theirs = Passes(model, budget=2**30), Passes(unpruned, budget=2**30)
    for names in LAYERS:
        resumed = collect_stats(mine, theirs, names, batches)
        plain = collect_stats(model, unpruned, names, batches)
        for n in names:
            for field in ("gram", "cross", "energy"):
                torch.testing.assert_close(
                    getattr(resumed[n], field), getattr(plain[n], field), rtol=0, atol=0
                )


class Twice(nn.Module):
    """Applies one convolution twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(torch.relu(self.shared(torch.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def test_a_consumer_called_twice_gives_both_calls_and_the_pass_stops_after() -> None:
    torch.manual_seed(0)
    model = Twice().eval()
    batches = [(torch.randn(3, 3, 5, 5),) for _ in range(2)]
    assert call_counts(model, ["shared"], batches[0][0]) == {"shared": 2}
    heads: list[int] = []  # the batch sizes fc saw
    model.fc.register_forward_hook(lambda _m, args, _o: heads.append(args[0].shape[0]))
    stats = collect_stats(Passes(model, budget=2**30), model, ["shared"], batches)
    assert stats["shared"].rows == 2 * 2 * 3 * 5 * 5  # batches x calls x samples x positions
    assert 3 not in heads  # every pass stopped after the second call (the two-sample passes
    # that find the call counts and the kept calls run to the end)


def test_weights_made_in_inference_mode_are_never_replayed(setup) -> None:
    model, batches = setup
    with torch.inference_mode():  # such tensors keep no version: changes cannot be seen
        model.stem.weight = nn.Parameter(model.stem.weight.clone(), requires_grad=False)
    plain = _walk(Passes(model), batches)
    model.stem.computed = 0
    resumed = _walk(Passes(model, budget=2**30), batches)
    _assert_same(resumed, plain)
    assert model.stem.computed == len(batches) * len(LAYERS) + len(LAYERS)


class Flattens(nn.Module):
    """Views its feature map as a matrix, which a channels-last map does not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


def test_channels_last_is_taken_where_the_model_gives_the_same_outputs(setup) -> None:
    model, batches = setup
    images = batches[0][0]
    assert takes_channels_last(model, images)
    assert not takes_channels_last(Flattens().eval(), images)  # it raises on them
    assert not takes_channels_last(nn.Linear(6, 2), images[:, 0])  # no images
    tokens = torch.randint(0, 5, (3, 7))
    assert not takes_channels_last(nn.Embedding(5, 4), tokens)


def test_passes_on_channels_last_images_record_what_plain_passes_do(setup) -> None:
    model, batches = setup
    layout = []
    conv = model.blocks[1].conv2
    handle = conv.register_forward_pre_hook(  # full batches (two samples show the structure)
        lambda _m, args: (
            layout.append(args[0].is_contiguous(memory_format=torch.channels_last))
            if len(args[0]) == len(batches[0][0])
            else None
        )
    )
    last = _walk(Passes(model, budget=2**20), [(channels_last(x),) for (x,) in batches])
    handle.remove()
    plain = _walk(Passes(model), batches)
    assert layout and all(layout)  # the consumers read channels-last maps
    assert len(last) == len(plain)
    for a, b in zip(last, plain, strict=True):
        for name, calls in b.items():
            for (x, y), (u, v) in zip(a[name], calls, strict=True):
                torch.testing.assert_close(x, u)
                torch.testing.assert_close(y, v)
