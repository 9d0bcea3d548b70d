"""prune(): greedy picks, budgets, tolerance, coupled channels, determinism, resume, errors."""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import gfsprune
from gfsprune import Macs, Params, PruneConfig, Tolerance, Widths, prune
from gfsprune.errors import ConfigError, DataError, ModelError
from gfsprune.surgery import prune_channels
from tests.nets import Chain, Coupled, randomize_norms


def _data(shape: tuple[int, ...], classes: int, batches: int = 3, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(batches)
    ]


@pytest.fixture
def chain():
    torch.manual_seed(0)
    return randomize_norms(Chain(width=6)), _data((2, 5, 5), 3)


def _loss(model: nn.Module, batch) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(batch[0]), batch[1]))


@pytest.mark.parametrize("rescale", [True, False])
def test_every_pick_is_the_brute_force_best_candidate(chain, rescale: bool) -> None:
    model, data = chain
    batch = data[0]
    result = prune(
        model,
        [batch],
        batch[0][:1],
        target=Widths({"c1": 3, "c2": 2}),
        progress=False,
        config=PruneConfig(objective="loss", candidates=None, rescale=rescale, evaluator="naive"),
    )
    fixed: dict[str, list[int]] = {}
    for plan, log in zip(result.plan, result.layers, strict=True):
        chosen: list[int] = []
        for pick, reported in zip(plan.kept, log.losses, strict=True):
            # Brute force on physically pruned copies: the layer keeps chosen + [c].
            losses = {}
            for c in [i for i in range(plan.width) if i not in chosen]:
                kept = {**fixed, plan.name: [*chosen, c]}
                scales = {n: (plan.width / len(k) if rescale else 1.0) for n, k in kept.items()}
                losses[c] = _loss(prune_channels(model, batch[0][:1], kept, scales=scales), batch)
            best = min(losses, key=lambda c: (round(losses[c], 5), c))
            assert pick == best
            assert reported == pytest.approx(losses[best], rel=1e-4)
            chosen.append(pick)
        fixed[plan.name] = chosen


@pytest.mark.parametrize("objective", ["loss", "reconstruction"])
def test_result_is_smaller_and_computes_the_masked_function(chain, objective: str) -> None:
    model, data = chain
    x = data[0][0]
    config = PruneConfig(objective=objective, candidates=4)
    result = prune(model, data, x[:1], target=Macs(0.5), progress=False, config=config)
    assert result.model.c1.out_channels < 6 and result.model.c2.in_channels < 6
    assert result.macs_after < result.macs_before and result.params_after < result.params_before
    assert abs(result.macs_ratio - 0.5) <= 0.02 * 0.5 + 0.05  # 6-channel layers are coarse
    assert [len(p.kept) for p in result.plan] == [len(log.losses) for log in result.layers]
    assert model.c1.out_channels == 6  # not modified
    if objective != "loss":
        return  # reconstruction re-solves the consumers: not the original network masked
    # The original network with the plan's channels zeroed (and kept ones scaled) by hand.
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for plan, consumer in zip(result.plan, (masked.c2, masked.fc), strict=True):
            factor = torch.zeros(plan.width)
            factor[plan.kept] = plan.scale
            weight = consumer.weight
            weight.mul_(factor.view(1, -1, *[1] * (weight.dim() - 2)))
    torch.testing.assert_close(result.model(x), masked(x), rtol=1e-4, atol=1e-5)


def test_naive_and_batched_evaluators_agree(chain) -> None:
    model, data = chain
    runs = [
        prune(
            model,
            data,
            data[0][0][:1],
            target=Macs(0.4),
            progress=False,
            config=PruneConfig(objective="loss", candidates=3, seed=5, evaluator=e),
        )
        for e in ("naive", "batched")
    ]
    assert [p.kept for p in runs[0].plan] == [p.kept for p in runs[1].plan]
    for a, b in zip(runs[0].layers, runs[1].layers, strict=True):
        assert a.losses == pytest.approx(b.losses, rel=1e-5)


def test_deterministic_for_a_seed_and_sampling_depends_on_it() -> None:
    torch.manual_seed(1)
    model = randomize_norms(Chain(width=16))
    data = _data((2, 5, 5), 3)

    def run(seed: int) -> list[list[int]]:
        config = PruneConfig(objective="loss", candidates=3, seed=seed)
        result = prune(model, data, data[0][0][:1], target=Macs(0.5), progress=False, config=config)
        return [p.kept for p in result.plan]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_coupled_model_is_pruned_consistently() -> None:
    torch.manual_seed(0)
    model = randomize_norms(Coupled())
    data = _data((3, 4, 4), 4)
    result = prune(
        model,
        data,
        data[0][0][:2],
        target=Params(0.5),
        progress=False,
        config=PruneConfig(candidates=None),
    )
    pruned = result.model
    kept = len(result.plan[0].kept)
    # residual stream, concat part, depthwise conv and its consumer all agree on widths
    assert pruned.c1.out_channels == pruned.c2.out_channels == pruned.c2.in_channels
    assert pruned.c1.out_channels + pruned.c3.out_channels == kept == pruned.dw.out_channels
    assert pruned.dw.groups == kept == pruned.b3.num_features == pruned.c4.in_channels
    assert pruned.c3.out_channels >= 1  # each concatenated part keeps a channel
    out = pruned(data[0][0])
    out.sum().backward()
    assert out.shape == (16, 4)


def test_tolerance_stops_at_the_first_pick_within_reach(chain) -> None:
    model, data = chain
    eps = 0.05
    result = prune(
        model,
        data,
        data[0][0][:1],
        target=Tolerance(eps),
        progress=False,
        config=PruneConfig(candidates=None),
    )
    for plan, log in zip(result.plan, result.layers, strict=True):
        threshold = log.reference * (1 + eps)
        assert log.losses[-1] <= threshold or len(plan.kept) == plan.width
        assert all(loss > threshold for loss in log.losses[:-1])


def test_backward_strategy_keeps_the_requested_widths(chain) -> None:
    model, data = chain
    result = prune(
        model,
        data,
        data[0][0][:1],
        target=Widths({"c1": 2, "c2": 4}),
        progress=False,
        config=PruneConfig(strategy="backward"),
    )
    assert [len(p.kept) for p in result.plan] == [2, 4]
    assert [len(log.losses) for log in result.layers] == [4, 2]  # one loss per removal


def test_interrupted_run_resumes_to_the_same_plan(chain, tmp_path, monkeypatch) -> None:
    model, data = chain
    kwargs = dict(target=Macs(0.5), config=PruneConfig(candidates=3), progress=False)
    straight = prune(model, data, data[0][0][:1], **kwargs)
    state = tmp_path / "progress.json"
    module = importlib.import_module("gfsprune.core.prune")  # the package exports a function too
    real = module.select_layer
    calls = []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, "select_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prune(model, data, data[0][0][:1], checkpoint=state, **kwargs)
    assert len(json.loads(state.read_text())["plan"]) == 1
    monkeypatch.setattr(module, "select_layer", real)
    resumed = prune(model, data, data[0][0][:1], checkpoint=state, **kwargs)
    assert [p.kept for p in resumed.plan] == [p.kept for p in straight.plan]
    with pytest.raises(ConfigError, match="other settings.*candidates"):
        prune(
            model,
            data,
            data[0][0][:1],
            checkpoint=state,
            target=Macs(0.5),
            progress=False,
            config=PruneConfig(candidates=2),
        )


def test_the_curves_and_selection_passes_are_named_apart(chain, capsys) -> None:
    model, data = chain
    config = PruneConfig(objective="loss", allocator="curves", candidates=2)
    prune(model, data, data[0][0][:1], target=Macs(0.5), config=config)
    err = capsys.readouterr().err
    assert "curves [1/2] c1" in err and "select [1/2] c1" in err
    assert re.search(r"select \[2/2\] c2 \(run ~\d+s left\)", err)


def test_progress_bar_is_silent_when_disabled(chain, capsys) -> None:
    model, data = chain
    for progress in (False, True):
        config = PruneConfig(candidates=2)
        prune(model, data, data[0][0][:1], target=Macs(0.5), progress=progress, config=config)
        err = capsys.readouterr().err
        assert ("c1" in err) == progress and (err == "") != progress


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": 0.5}, ConfigError, "'target' must be gfsprune.Macs"),
        ({"target": Macs(0.001)}, ConfigError, r"cannot be reached.*at least 0\.\d+"),
        ({"target": Macs(0.99)}, ConfigError, r"nearest step.*at most 0\.\d+"),
        ({"target": Macs(0.5), "config": {"x": 1}}, ConfigError, "'config' must be a"),
        ({"target": Macs(0.5), "ignore": ["nope"]}, ConfigError, "'ignore' must name modules"),
        (
            {"target": Tolerance(0.1), "config": PruneConfig(strategy="backward")},
            ConfigError,
            "'backward' strategy needs a size target",
        ),
        ({"target": Widths({"zz": 1})}, ConfigError, r"names layers \['zz'\]"),
        ({"target": Widths({"c1": 9})}, ConfigError, "more channels than these layers have"),
    ],
)
def test_bad_options_are_refused_before_any_work(chain, kwargs, error, match) -> None:
    model, data = chain
    with pytest.raises(error, match=match):
        prune(model, data, data[0][0][:1], progress=False, **kwargs)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"candidates": 0}, r"'candidates' option of PruneConfig must be a positive.*Got 0"),
        ({"candidates": True}, "'candidates' option"),
        ({"seed": -1}, r"'seed' option of PruneConfig must be an integer in \[0, 2\*\*63\)"),
        ({"seed": 2**70}, r"'seed' option .* Got 1180591620717411303424 instead"),
        ({"rescale": "yes"}, "'rescale' option"),
        ({"tie": -1e-3}, r"'tie' option of PruneConfig must be a number in \[0, 1\)"),
        (
            {"objective": "loss", "evaluator": "x"},
            r"'evaluator' option of NetworkLoss must be one of \['batched'",
        ),
        ({"evaluator": "naive"}, r"'evaluator' option of PruneConfig scores the network loss"),
        ({"strategy": "sideways"}, r"'strategy' option .* \['backward', 'forward'\]"),
        ({"allocator": 3}, "'allocator' option of PruneConfig must be one of"),
        ({"device": "gpu7"}, "'device' option of PruneConfig must name a torch device"),
        ({"schedule": None}, "spelled schedule='exact'"),
        ({"rescale": False, "rescale_into": "weights"}, "rescale=False has none"),
    ],
)
def test_bad_config_options_are_refused_when_built(options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**options)


def test_target_ratios_are_validated() -> None:
    with pytest.raises(ValueError, match=r"'ratio' parameter of Macs .* \(0, 1\).*Got 1.5"):
        Macs(1.5)
    with pytest.raises(ValueError, match="'ratio' parameter of Params"):
        Params(0)
    with pytest.raises(ValueError, match="'eps' parameter of Tolerance"):
        Tolerance(-0.1)


def test_bad_data_is_reported(chain) -> None:
    model, data = chain
    x = data[0][0][:1]
    with pytest.raises(DataError, match=r"first mini-batch \(inputs \(16, 3, 5, 5\)\)"):
        prune(model, [(torch.randn(16, 3, 5, 5), data[0][1])], x, target=Macs(0.5), progress=False)
    with pytest.raises(DataError, match="it is empty"):
        prune(model, [], x, target=Macs(0.5), progress=False)
    with pytest.raises(DataError, match=r"\(inputs, targets\) mini-batches; got a Tensor"):
        prune(model, [data[0][0]], x, target=Macs(0.5), progress=False)
    once = (b for b in data[:1])
    with pytest.raises(DataError, match="must be re-iterable"):
        prune(model, once, x, target=Macs(0.5), progress=False, config=PruneConfig(candidates=1))


def test_nan_weights_are_reported(chain) -> None:
    model, data = chain
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match="loss on the first mini-batch is nan"):
        prune(model, data, data[0][0][:1], target=Macs(0.5), progress=False)


def test_model_without_prunable_layers_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="no prunable channel layer"):
        prune(model, _data((4,), 2), torch.randn(1, 4), target=Macs(0.5), progress=False)


def test_the_public_api_is_what_the_readme_uses() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    used = set(re.findall(r"gfsprune\.([A-Za-z_]\w*)", readme))
    used -= {"core", "io", "workflow", "scoring", "surgery", "theory", "models"}  # modules
    assert used <= set(gfsprune.__all__), used - set(gfsprune.__all__)
    for name in gfsprune.__all__:
        assert getattr(gfsprune, name) is not None
        assert name == "__version__" or getattr(gfsprune, name).__doc__


class _MixesChannels(nn.Module):
    """Subtracts the mean over channels between two convolutions: zeroing a channel at the
    consumer is then not what removing it does."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(2, 6, 3), nn.Conv2d(6, 4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = x - x.mean(1, keepdim=True)
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


def test_a_layer_whose_channels_are_mixed_outside_conv_and_linear_is_skipped() -> None:
    torch.manual_seed(0)
    data = _data((2, 7, 7), 3)
    result = prune(_MixesChannels(), data, data[0][0][:1], target=Widths({"c2": 2}), progress=False)
    assert result.skipped == [
        "c1 (removing its channels is not what masking does: outputs differ by up to 0.02, "
        "first at 'c2' (Conv2d))"
    ]
    assert [p.name for p in result.plan] == ["c2"] and result.model.c1.out_channels == 6


def test_a_custom_loss_is_what_selection_minimises(chain) -> None:
    model, data = chain
    x = data[0][0]
    with torch.no_grad():
        teacher = model(x)  # distillation: the unpruned model's outputs are the targets

    def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean()

    config = PruneConfig(objective="loss", candidates=None)
    result = prune(
        model, [(x, teacher)], x[:1], target=Macs(0.5), loss_fn=mse, config=config, progress=False
    )
    with torch.no_grad():
        final = float(mse(result.model(x), teacher))
    assert result.layers[-1].losses[-1] == pytest.approx(final, rel=1e-4)
    cross_entropy = prune(
        model, [(x, teacher.argmax(1))], x[:1], target=Macs(0.5), config=config, progress=False
    )
    assert [p.kept for p in cross_entropy.plan] != [p.kept for p in result.plan]


class _TwoInputs(nn.Module):
    """Takes an image and a per-sample gain, by keyword or position."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Chain(width=6)

    def forward(self, image: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.net(image) * gain[:, None]


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_nested_inputs_are_traced_scored_and_pruned(kind: str) -> None:
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    randomize_norms(model)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        image, gain = torch.randn(8, 2, 5, 5, generator=g), torch.rand(8, generator=g) + 0.5
        inputs = {"image": image, "gain": gain} if kind == "dict" else (image, gain)
        batches.append((inputs, torch.randint(0, 3, (8,), generator=g)))
    example = batches[0][0]
    plans = {
        e: prune(
            model,
            batches,
            example,
            target=Macs(0.5),
            config=PruneConfig(objective="loss", candidates=3, evaluator=e),
            progress=False,
        )
        for e in ("naive", "batched")
    }
    assert [p.kept for p in plans["naive"].plan] == [p.kept for p in plans["batched"].plan]
    plans["default"] = prune(model, batches, example, target=Macs(0.5), progress=False)
    args = example if kind == "tuple" else ()
    kwargs = example if kind == "dict" else {}
    for run in ("batched", "default"):
        pruned = plans[run].model
        assert pruned(*args, **kwargs).shape == (8, 3)
        assert pruned.net.c1.out_channels < 6


def test_a_pruned_model_unlike_the_masked_one_is_refused_naming_the_module(monkeypatch) -> None:
    import gfsprune.core.prune as core_prune

    monkeypatch.setattr(core_prune, "removable_layers", lambda _m, _x, layers, seed: (layers, []))
    torch.manual_seed(0)
    data = _data((2, 7, 7), 3)
    with pytest.raises(ModelError, match=r"did \(outputs differ by .*, first at 'c2' \(Conv2d\)\)"):
        prune(_MixesChannels(), data, data[0][0][:1], target=Macs(0.5), progress=False)
