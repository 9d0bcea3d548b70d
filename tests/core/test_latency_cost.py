"""The latency cost model sums interpolated piece timings and a calibrated rest; its timings
are cached on disk per setting (a fake timer keeps every test deterministic)."""

from __future__ import annotations

import functools
import json
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from gfsprune import Latency, PruneConfig, prune
from gfsprune.core.latency_cost import LatencyCost, _spread
from gfsprune.core.planner import CLOSE, LOOPS
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers, prune_channels
from tests.launch import torchrun
from tests.nets import Chain, Coupled, GroupedBlock, randomize_norms

_PIECES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
_REST = 0.002  # the fake whole model's seconds outside its pieces


def _piece(module: nn.Module) -> float:
    """Fake seconds of one piece, bilinear in its input and output widths (linear in the
    one width of a norm or depthwise convolution)."""
    if isinstance(module, nn.BatchNorm2d):
        return 1e-4 * module.num_features
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
        return 2e-4 * module.out_channels
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
    else:
        i, o = module.in_channels, module.out_channels
    return 1e-3 + 1e-4 * i + 2e-4 * o + 3e-5 * i * o


def fake_timer(calls: list[nn.Module], penalty: float = 0.0):
    """Fake seconds: a piece's :func:`_piece`; a whole model's, its pieces' and the rest,
    plus ``penalty * (1 - s) ** 2`` where ``s`` is its first convolution's kept share of 16
    channels (what no sum of pieces and rest linear in the kept share predicts)."""

    def timer(module: nn.Module, inputs: object, **options) -> float:  # options: as timing takes
        calls.append(module)
        if isinstance(module, _PIECES):
            return _piece(module)
        pieces = [m for m in module.modules() if isinstance(m, _PIECES)]
        missed = penalty * (1 - pieces[0].out_channels / 16) ** 2
        return _REST + missed + sum(_piece(m) for m in pieces)

    return timer


def _keep(layers, kept):
    return [np.isin(np.arange(layer.width), kept[layer.name]).astype(float) for layer in layers]


@pytest.mark.parametrize(("net", "shape"), [(Coupled, (1, 3, 4, 4)), (GroupedBlock, (1, 3, 5, 5))])
@pytest.mark.parametrize("seed", range(3))
def test_prediction_equals_the_timing_of_the_pruned_model(net, shape, seed: int) -> None:
    torch.manual_seed(seed)
    model, x = randomize_norms(net()), torch.randn(shape)
    layers, _ = find_layers(model, x)
    cost = LatencyCost(model, x, layers, batch=2, timer=fake_timer([]), cache=False)
    rng = np.random.default_rng(seed)
    kept = {}
    for layer in layers:
        items = rng.choice(layer.n_items, int(rng.integers(1, layer.n_items + 1)), replace=False)
        kept[layer.name] = sorted(layer.channels(items.tolist()))
        for segment in layer.segments:  # every concatenated part keeps at least one channel
            if not set(segment) & set(kept[layer.name]):
                kept[layer.name].append(segment[0])
    pruned = prune_channels(model, x, kept)
    measured = fake_timer([])(pruned, x)
    assert cost.predict(_keep(layers, kept))["latency"] == pytest.approx(measured, rel=1e-9)
    assert cost.measure(pruned, x) == pytest.approx(
        {"latency": measured, "latency_predicted": measured, "latency_batch": 2}, rel=1e-9
    )
    assert cost.full_seconds == pytest.approx(fake_timer([])(model, x), rel=1e-9)
    assert cost.calibration["c0"] == pytest.approx(_REST)
    full = [np.ones(layer.width) for layer in layers]
    assert cost.ratio(full, "latency") == pytest.approx(1.0)


def test_calibration_shares_hold_under_load_that_drifts() -> None:
    torch.manual_seed(0)
    model, x = randomize_norms(Coupled()), torch.randn(1, 3, 4, 4)
    layers, _ = find_layers(model, x)
    steady = fake_timer([])
    load = [1.0]

    def drifting(module: nn.Module, inputs: object, **options) -> float:
        if not isinstance(module, _PIECES):
            load[0] += 0.5  # every whole-model timing finds the machine busier
        return load[0] * steady(module, inputs)

    cost = LatencyCost(model, x, layers, timer=drifting, cache=False)
    half = {layer.name: _spread(layer, 0.5) for layer in layers}
    expected = steady(prune_channels(model, x, half), x) / steady(model, x)
    assert cost.calibration["half"] / cost.calibration["full"] == pytest.approx(expected)


def test_interpolation_is_exact_at_grid_widths_and_between_them_linear() -> None:
    # width 4 and 3 points: c2's output grid is 1, 2, 4, where the calibration copies are
    model, x = randomize_norms(Chain(width=4)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)

    def timer(module, inputs):  # not bilinear: conv c2 costs its output width squared
        if isinstance(module, nn.Conv2d) and module.in_channels != 2:
            return 1e-3 * module.out_channels**2
        if isinstance(module, _PIECES):
            return 0.0
        return 1.0 + sum(timer(m, inputs) for m in module.modules() if isinstance(m, _PIECES))

    cost = LatencyCost(model, x, layers, points=3, timer=timer, cache=False)

    def at(width: float) -> float:  # c2's input width held at full
        keep = {"c1": np.ones(4), "c2": np.full(4, width / 4)}
        return cost.predict([keep[layer.name] for layer in layers])["latency"]

    assert at(2) - at(1) == pytest.approx(1e-3 * (4 - 1))
    assert at(4) - at(2) == pytest.approx(1e-3 * (16 - 4))
    assert at(3) - at(2) == pytest.approx((at(4) - at(2)) / 2)


def test_identical_pieces_are_timed_once_and_the_cache_serves_a_second_build(tmp_path) -> None:
    model, x = randomize_norms(Chain(width=6)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    calls: list[nn.Module] = []
    first = LatencyCost(model, x, layers, batch=3, timer=fake_timer(calls), cache=tmp_path)
    keys = {repr(m) for m in calls if isinstance(m, _PIECES)}
    assert len(keys) == first.measured - 21  # every piece once, 5 rounds of 2 copies and 2 unpruned
    calls.clear()
    second = LatencyCost(model, x, layers, batch=3, timer=fake_timer(calls), cache=tmp_path)
    assert calls == [] and second.measured == 0
    assert second.full_seconds == first.full_seconds
    (file,) = tmp_path.glob("latency-*.json")
    key = json.loads(file.read_text())["key"]
    assert key["batch"] == 3 and key["threads"] == torch.get_num_threads()
    assert {"device", "torch", "memory_format"} <= set(key)
    LatencyCost(model, x, layers, batch=4, timer=fake_timer(calls), cache=tmp_path)
    assert calls and len(list(tmp_path.glob("latency-*.json"))) == 2  # another batch size


def test_an_unreadable_cache_is_measured_anew_and_rewritten(tmp_path) -> None:
    model, x = randomize_norms(Chain(width=4)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    LatencyCost(model, x, layers, timer=fake_timer([]), cache=tmp_path)
    (file,) = tmp_path.glob("latency-*.json")
    file.write_text("{not json")
    cost = LatencyCost(model, x, layers, timer=fake_timer([]), cache=tmp_path)
    assert cost.measured > 0
    assert json.loads(file.read_text())["pieces"]


@pytest.mark.parametrize(("option", "value"), [("batch", 0), ("points", 1), ("batch", True)])
def test_bad_options_are_refused(option: str, value: object) -> None:
    model, x = Chain(), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    with pytest.raises(ConfigError, match=option if option == "points" else "batch size"):
        LatencyCost(model, x, layers, timer=fake_timer([]), cache=False, **{option: value})


@dataclass(frozen=True)
class FakeLatency(Latency):
    """A latency budget on the fake timer (with its ``penalty``)."""

    penalty: float = 0.0

    def cost_model(self):
        timer = fake_timer([], self.penalty)
        return functools.partial(LatencyCost, batch=self.batch, timer=timer, cache=False)


def _prune_chain(target, **options):
    torch.manual_seed(0)
    model, x = randomize_norms(Chain(width=16)), torch.randn(8, 2, 5, 5)
    data = [(x, torch.randint(0, 3, (8,)))]
    config = PruneConfig(**{"candidates": 2, "allocator": "uniform", **options})
    return prune(model, data, x[:1], target=target, config=config, progress=False)


@pytest.mark.parametrize("ratio", [0.4, 0.7])
def test_prune_fills_a_latency_budget(ratio: float) -> None:
    result = _prune_chain(FakeLatency(ratio, batch=4))
    before, after = result.metrics_before, result.metrics_after
    assert after["latency"] / before["latency"] == pytest.approx(ratio, abs=0.03)
    assert after["latency_predicted"] == pytest.approx(after["latency"], rel=1e-9)
    assert {"macs", "params"} <= set(after)


@pytest.mark.parametrize("ratio", [0.4, 0.45])
def test_the_planned_model_is_timed_and_replanned_until_its_latency_meets_the_budget(
    ratio, monkeypatch
) -> None:
    shares = []  # the measured shares of every model timed whole for the plan
    calibrate = LatencyCost.calibrate

    def spy(self, widths):
        shares.append(calibrate(self, widths)["latency"])
        return {"latency": shares[-1]}

    monkeypatch.setattr(LatencyCost, "calibrate", spy)
    penalty = 0.004  # up to 14% of the unpruned model's seconds, missed by the pieces
    result = _prune_chain(FakeLatency(ratio, penalty=penalty))
    measured = result.metrics_after["latency"] / result.metrics_before["latency"]
    assert measured == pytest.approx(ratio, rel=0.03)
    assert result.metrics_after["latency_predicted"] == pytest.approx(
        result.metrics_after["latency"], rel=0.03
    )
    # the narrowest model, then planned models until one was within CLOSE (or LOOPS of them)
    assert 2 <= len(shares) <= 1 + LOOPS
    assert abs(shares[-1] / ratio - 1) <= CLOSE or len(shares) == 1 + LOOPS


def test_calibrate_corrects_predictions_through_the_timed_model_and_caches_it(tmp_path) -> None:
    model, x = randomize_norms(Chain(width=16)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    calls: list[nn.Module] = []
    cost = LatencyCost(model, x, layers, timer=fake_timer(calls, 0.004), cache=tmp_path)
    keep = [np.full(16, 4 / 16), np.full(16, 8 / 16)]
    before = cost.ratio(keep, "latency")
    revision = cost.revision
    measured = cost.calibrate([4, 8])["latency"]
    assert measured > before  # the penalty the pieces miss
    assert cost.ratio(keep, "latency") == pytest.approx(measured, rel=1e-9)
    assert cost.revision > revision and cost.ratio([np.ones(16)] * 2, "latency") == 1.0
    # predictions stay non-decreasing in the widths
    shares = [cost.ratio([np.full(16, w / 16), np.full(16, 0.5)], "latency") for w in range(1, 17)]
    assert shares == sorted(shares)
    calls.clear()
    again = LatencyCost(model, x, layers, timer=fake_timer(calls, 0.004), cache=tmp_path)
    assert again.calibrate([4, 8]) == {"latency": measured} and calls == []


def test_a_newer_whole_model_timing_replaces_an_older_one_it_contradicts() -> None:
    model, x = randomize_norms(Chain(width=16)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    slower = [1.0]  # a burst of load while one pruned model is timed

    def timer(module, inputs):
        pruned = isinstance(module, Chain) and module.c1.out_channels < 16
        return (slower[0] if pruned else 1.0) * fake_timer([])(module, inputs)

    cost = LatencyCost(model, x, layers, timer=timer, cache=False)
    slower[0] = 1.5
    noisy = cost.calibrate([4, 8])["latency"]
    slower[0] = 1.0
    wider = cost.calibrate([6, 8])["latency"]
    assert wider < noisy and noisy not in cost.corrections.values()
    keep = [np.full(16, 6 / 16), np.full(16, 0.5)]
    assert cost.ratio(keep, "latency") == pytest.approx(wider, rel=1e-9)


def test_round_to_stays_a_constraint_under_a_latency_budget() -> None:
    result = _prune_chain(FakeLatency(0.5), round_to=4, allocator="curves")
    assert all(len(p.kept) % 4 == 0 for p in result.plan)
    assert result.metrics_after["latency"] < result.metrics_before["latency"]


@pytest.mark.parametrize(("ratio", "nearest"), [(0.02, "at least"), (0.9999, "at most")])
def test_an_unreachable_latency_budget_is_refused_with_the_nearest_ratio(ratio, nearest) -> None:
    with pytest.raises(ConfigError, match=f"FakeLatency\\({ratio}\\) cannot .* {nearest} 0\\."):
        _prune_chain(FakeLatency(ratio))


def test_the_refusal_names_the_measured_latency_of_the_narrowest_model() -> None:
    model, x = randomize_norms(Chain(width=16)), torch.randn(1, 2, 5, 5)
    narrowest = prune_channels(model, x, {"c1": [0], "c2": [0]})
    timer = fake_timer([], 0.004)
    measured = timer(narrowest, x) / timer(model, x)
    raw = LatencyCost(model, x, find_layers(model, x)[0], timer=timer, cache=False)
    predicted = raw.ratio([np.full(16, 1 / 16)] * 2, "latency")
    assert predicted < measured - 0.02  # a budget between them would pass a predicted check
    with pytest.raises(ConfigError, match=f"at least {measured:.4f}"):
        _prune_chain(FakeLatency((predicted + measured) / 2, penalty=0.004))


# Run by torchrun in two processes whose timers disagree (rank r times everything r + 1
# times slower): both must predict with rank 0's timings.
WORKER = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch

    from gfsprune import distributed
    from gfsprune.core.latency_cost import LatencyCost, _spread
    from gfsprune.surgery import find_layers
    from tests.core.test_latency_cost import fake_timer
    from tests.nets import Chain

    assert distributed.setup()
    slower = distributed.rank() + 1
    timer = fake_timer([])
    model, x = Chain(width=6), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    cost = LatencyCost(model, x, layers, timer=lambda m, i: slower * timer(m, i), cache=False)
    keep = [np.full(6, 0.5), np.ones(6)]
    cost.calibrate([2, 6])  # a whole-model timing: the main process's too
    seconds = cost.predict(keep)["latency"]
    with open(f"{sys.argv[1]}/rank{distributed.rank()}.txt", "w") as f:
        f.write(repr(seconds))
    distributed.teardown()
    """
)


@pytest.mark.slow
def test_distributed_processes_plan_with_the_main_process_timings(tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun(str(script), str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = {r: float((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1)}
    model, x = Chain(width=6), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    alone = LatencyCost(model, x, layers, timer=fake_timer([]), cache=False)
    alone.calibrate([2, 6])
    expected = alone.predict([np.full(6, 0.5), np.ones(6)])["latency"]
    assert predicted == pytest.approx({0: expected, 1: expected}, rel=1e-12)


class _SamePadConv(nn.Conv2d):
    """A convolution subclass whose constructor needs more than ``nn.Conv2d``'s arguments
    (as EfficientNet's ``Conv2dStaticSamePadding`` does) and pads in a submodule."""

    def __init__(self, c_in: int, c_out: int, *, image_size: int) -> None:
        super().__init__(c_in, c_out, 3, stride=2)
        self.pad = nn.ZeroPad2d((image_size + 1) % 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


def test_pieces_of_a_convolution_subclass_are_copies_that_run_at_their_widths() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        _SamePadConv(3, 8, image_size=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _SamePadConv(8, 8, image_size=4),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ran: list[tuple[nn.Module, torch.Size]] = []

    def timer(module: nn.Module, inputs: object, **options) -> float:
        ran.append((module, module(inputs).shape))
        return 1e-3

    layers, _ = find_layers(model, x)
    LatencyCost(model, x, layers, timer=timer, cache=False)
    convolutions = [(m, shape) for m, shape in ran if isinstance(m, nn.Conv2d)]
    assert convolutions and all(type(m) is _SamePadConv for m, _ in convolutions)
    assert all(m is not model[0] and m is not model[3] for m, _ in convolutions)
    assert {m.out_channels for m, _ in convolutions} > {8}  # narrower copies ran too
    assert all(shape[1] == m.out_channels for m, shape in convolutions)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
