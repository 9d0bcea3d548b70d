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
from gfsprune.core.latency_cost import LatencyCost
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


def fake_timer(calls: list[nn.Module]):
    def timer(module: nn.Module, inputs: object, **options) -> float:  # options: as timing takes
        calls.append(module)
        if isinstance(module, _PIECES):
            return _piece(module)
        return _REST + sum(_piece(m) for m in module.modules() if isinstance(m, _PIECES))

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


def test_interpolation_is_exact_at_grid_widths_and_between_them_linear() -> None:
    model, x = randomize_norms(Chain(width=9)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)

    def timer(module, inputs):  # not bilinear: conv c2 costs its output width squared
        if isinstance(module, nn.Conv2d) and module.in_channels != 2:
            return 1e-3 * module.out_channels**2
        return 0.0 if isinstance(module, _PIECES) else 1.0

    cost = LatencyCost(model, x, layers, points=3, timer=timer, cache=False)

    # c2's output grid: 1, 5, 9 channels (its input width held at full)
    def at(width: float) -> float:
        keep = {"c1": np.ones(9), "c2": np.full(9, width / 9)}
        return cost.predict([keep[layer.name] for layer in layers])["latency"]

    assert at(5) - at(1) == pytest.approx(1e-3 * (25 - 1))
    assert at(3) - at(1) == pytest.approx((at(5) - at(1)) / 2)


def test_identical_pieces_are_timed_once_and_the_cache_serves_a_second_build(tmp_path) -> None:
    model, x = randomize_norms(Chain(width=6)), torch.randn(1, 2, 5, 5)
    layers, _ = find_layers(model, x)
    calls: list[nn.Module] = []
    first = LatencyCost(model, x, layers, batch=3, timer=fake_timer(calls), cache=tmp_path)
    keys = {repr(m) for m in calls if isinstance(m, _PIECES)}
    assert len(keys) == first.measured - 2  # every piece once, plus the two whole models
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
    """A latency budget on the fake timer."""

    def cost_model(self):
        return functools.partial(LatencyCost, batch=self.batch, timer=fake_timer([]), cache=False)


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


def test_round_to_stays_a_constraint_under_a_latency_budget() -> None:
    result = _prune_chain(FakeLatency(0.5), round_to=4, allocator="curves")
    assert all(len(p.kept) % 4 == 0 for p in result.plan)
    assert result.metrics_after["latency"] < result.metrics_before["latency"]


@pytest.mark.parametrize(("ratio", "nearest"), [(0.02, "at least"), (0.9999, "at most")])
def test_an_unreachable_latency_budget_is_refused_with_the_nearest_ratio(ratio, nearest) -> None:
    with pytest.raises(ConfigError, match=f"FakeLatency\\({ratio}\\) cannot .* {nearest} 0\\."):
        _prune_chain(FakeLatency(ratio))


# Run by torchrun in two processes whose timers disagree (rank r times everything r + 1
# times slower): both must predict with rank 0's timings.
WORKER = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch

    from gfsprune import distributed
    from gfsprune.core.latency_cost import LatencyCost
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
    expected = alone.predict([np.full(6, 0.5), np.ones(6)])["latency"]
    assert predicted == pytest.approx({0: expected, 1: expected}, rel=1e-12)
