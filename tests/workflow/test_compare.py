"""The comparisons: same widths for every method, top-k by importance, the gfs entry equal to
a direct prune, results independent of which other methods ran, seeded re-initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune import Latency, Macs, PruneConfig, prune
from gfsprune.core import latency_cost
from gfsprune.errors import ConfigError
from gfsprune.io.atomic import write_json
from gfsprune.io.results import read_results
from gfsprune.models import get
from gfsprune.workflow import compare as compare_module
from gfsprune.workflow import methods
from gfsprune.workflow.compare import CompareConfig, compare, parse_epochs, parse_methods
from gfsprune.workflow.data import load_data, make_loader
from gfsprune.workflow.methods import importance_channels, reinitialize
from gfsprune.workflow.report import summarize
from gfsprune.workflow.train import TrainConfig, evaluate, fit
from tests.core.test_latency_cost import fake_timer

FINETUNE = TrainConfig(epochs=1, batch_size=64, lr=0.01)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    torch.manual_seed(0)
    model = get("digits_cnn", width_mult=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(epochs=2, batch_size=64, lr=0.05)
        fit(model, digits, config, progress=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return model.eval()


_TIMINGS = ("seconds", "latency_b1", "latency_b64")


def _without_seconds(results: dict) -> dict:
    return {k: {m: v for m, v in row.items() if m not in _TIMINGS} for k, row in results.items()}


def test_every_method_keeps_greedy_selections_widths(trained, digits) -> None:
    config = CompareConfig(macs=0.5, finetune=FINETUNE, methods=("gfs", "l1", "bn", "backward"))
    comparison = compare(trained, digits, config, progress=False)
    rows = comparison.results["methods"]
    assert len({(r["macs"], r["params"]) for r in rows.values()}) == 1
    assert rows["gfs"]["macs"] / comparison.results["base"]["macs"] == pytest.approx(0.5, abs=0.03)
    assert [(p.name, p.width) for p in comparison.plan] == [
        ("features.0.0", 8),
        ("features.1.0", 16),
    ]


def test_the_gfs_entry_is_what_prune_gives_on_the_same_batches(trained, digits) -> None:
    config = CompareConfig(
        macs=0.5, finetune=FINETUNE, methods=("gfs",), seed=3, prune=PruneConfig(candidates=4)
    )
    comparison = compare(trained, digits, config, progress=False)
    loader = make_loader(digits.train, batch_size=128, shuffle=True, seed=3)
    direct = prune(
        trained,
        loader,
        torch.zeros(1, 1, 8, 8),
        target=Macs(0.5),
        config=PruneConfig(candidates=4, seed=3),
        progress=False,
    )
    assert [p.kept for p in comparison.plan] == [p.kept for p in direct.plan]
    acc, loss = evaluate(direct.model, digits.test)
    row = comparison.results["methods"]["gfs"]
    assert (row["acc_pruned"], row["loss_pruned"]) == pytest.approx((acc, loss))


@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_reaches_greedy_selection(trained, digits, rescale: bool) -> None:
    config = CompareConfig(
        macs=0.5, finetune=FINETUNE, methods=("gfs",), prune=PruneConfig(rescale=rescale)
    )
    plan = compare(trained, digits, config, progress=False).plan
    assert [p.scale for p in plan] == [p.width / len(p.kept) if rescale else 1.0 for p in plan]


def test_a_methods_result_does_not_depend_on_the_others_run(trained, digits) -> None:
    alone = CompareConfig(macs=0.5, finetune=FINETUNE, methods=("taylor", "random"))
    more = CompareConfig(macs=0.5, finetune=FINETUNE, methods=("l1", "bn", "random", "taylor"))
    first = compare(trained, digits, alone, progress=False).results["methods"]
    second = compare(trained, digits, more, progress=False).results["methods"]
    for method in ("taylor", "random"):
        assert _without_seconds({method: first[method]}) == _without_seconds(
            {method: second[method]}
        )


def test_importance_keeps_the_top_scored_channels(trained) -> None:
    def by_index(group) -> torch.Tensor:
        return torch.arange(len(group[0].root_idxs), dtype=torch.float)  # last channels best

    kept = importance_channels(trained, torch.zeros(1, 1, 8, 8), {"features.1.0": 5}, by_index)
    assert kept == {"features.1.0": [11, 12, 13, 14, 15]}


def test_an_importance_without_scores_is_a_clear_error(trained) -> None:
    with pytest.raises(ValueError, match="gives no score per channel of layer 'features.0.0'"):
        importance_channels(trained, torch.zeros(1, 1, 8, 8), {"features.0.0": 2}, lambda g: None)


def test_reinitialize_is_seeded_and_clears_running_statistics(trained) -> None:
    a, b, c = (reinitialize(trained, seed=s).state_dict() for s in (1, 1, 2))
    for name, value in a.items():
        torch.testing.assert_close(value, b[name])
    conv = "features.0.0.weight"
    assert not torch.equal(a[conv], c[conv]) and not torch.equal(
        a[conv], trained.state_dict()[conv]
    )
    torch.testing.assert_close(a["features.0.1.running_mean"], torch.zeros(8))
    torch.testing.assert_close(a["features.0.1.running_var"], torch.ones(8))
    torch.testing.assert_close(a["features.0.1.weight"], torch.ones(8))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gfs,magic", "'magic' is unknown"),
        ("gfs,gfs", "must be distinct names"),
        (" , ", "must be distinct names"),
    ],
)
def test_bad_method_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_methods(text)


def test_config_checks_ratio_and_scratch_recipe(trained, digits) -> None:
    with pytest.raises(ConfigError, match=r"open interval \(0, 1\).*Got 1.5"):
        CompareConfig(macs=1.5, finetune=FINETUNE)
    with pytest.raises(ConfigError, match="is needed for 'scratch'"):
        compare(trained, digits, CompareConfig(macs=0.5, finetune=FINETUNE), progress=False)


def test_every_budget_is_its_own_fine_tuning_from_the_recalibrated_model(trained, digits) -> None:
    def rows(**options) -> dict:
        config = CompareConfig(
            macs=0.5,
            finetune=FINETUNE,
            methods=("gfs", "tp-l1"),
            prune=PruneConfig(candidates=4),
            **options,
        )
        return compare(trained, digits, config, progress=False).results["methods"]

    both = rows(epochs=(2, 1), recalibrate=True)
    one = rows(epochs=1, recalibrate=True)
    plain = rows(epochs=1)
    for name in ("gfs", "tp-l1"):
        assert set(both[name]["epochs"]) == {"0", "1", "2"}
        assert both[name]["epochs"]["1"] == one[name]["epochs"]["1"]  # not a prefix of 2
        assert plain[name]["epochs"]["0"] == {
            "acc": plain[name]["acc_pruned"],
            "loss": plain[name]["loss_pruned"],
        }
        assert one[name]["acc_pruned"] == plain[name]["acc_pruned"]
        assert one[name]["epochs"]["0"]["loss"] != one[name]["loss_pruned"]  # recalibrated
        assert one[name]["epochs"]["1"] != plain[name]["epochs"]["1"]


def test_budgets_are_normalised_and_checked(digits) -> None:
    assert CompareConfig(macs=0.5, finetune=FINETUNE).epochs == (0, 1)
    assert CompareConfig(macs=0.5, finetune=FINETUNE, epochs=5).epochs == (0, 5)
    assert CompareConfig(macs=0.5, finetune=FINETUNE, epochs=(5, 0, 1, 5)).epochs == (0, 1, 5)
    assert parse_epochs("0, 1,5") == (0, 1, 5)
    for text in ("", "1,-2", "1.5", "a"):
        with pytest.raises(ConfigError, match="non-negative whole numbers of epochs"):
            parse_epochs(text)
    with pytest.raises(ConfigError, match="'epochs' must be a non-negative integer.*Got -1"):
        CompareConfig(macs=0.5, finetune=FINETUNE, epochs=-1)
    warm = TrainConfig(epochs=3, warmup_epochs=1)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        CompareConfig(macs=0.5, finetune=warm, epochs=(1, 3))
    with pytest.raises(ConfigError, match="largest fine-tuning budget"):
        CompareConfig(macs=0.5, finetune=FINETUNE, epochs=0, methods=("gfs", "scratch"))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    config = CompareConfig(macs=0.5, finetune=FINETUNE, methods=("gfs",), recalibrate=True)
    with pytest.raises(ConfigError, match="Sequential has no BatchNorm layer"):
        compare(flat, digits, config, progress=False)


def test_fine_tuning_progress_names_the_method(trained, digits, capsys) -> None:
    config = CompareConfig(macs=0.5, finetune=FINETUNE, methods=("gfs", "random"))
    compare(trained, digits, config, progress=True)
    err = capsys.readouterr().err
    assert "fine-tune gfs: epoch 1/1" in err and "fine-tune random: epoch 1/1" in err


def test_a_latency_budget_matches_every_method_to_gfss_measured_latency(
    trained, digits, monkeypatch, tmp_path
) -> None:
    timer = fake_timer([])  # deterministic: a model's seconds from its pieces' widths
    monkeypatch.setattr(latency_cost, "median_seconds", timer)
    monkeypatch.setattr(
        compare_module, "measure_latency", lambda model, shape, batch, device: timer(model, None)
    )
    monkeypatch.setenv("GFSPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    matched = []  # what Torch-Pruning's bisection reached, and aimed at
    real = methods.match_share

    def spy(prune_at, share_of, *, target, **options):
        found = real(prune_at, share_of, target=target, **options)
        matched.append((share_of(found.model), target))
        return found

    monkeypatch.setattr(methods, "match_share", spy)
    config = CompareConfig(
        latency=Latency(0.6), finetune=FINETUNE, epochs=0, methods=("gfs", "l1", "tp-l1")
    )
    results = compare(trained, digits, config, progress=False).results
    budget = results["budget"]
    assert budget["target"] == repr(Latency(0.6)) and budget["batch"] == 1
    gfs = budget["latency_after"] / budget["latency_before"]
    assert gfs == pytest.approx(0.6, abs=0.05)
    rows = results["methods"]
    assert rows["l1"]["macs"] == rows["gfs"]["macs"]  # gfs's widths, so its latency
    # Torch-Pruning's own widths, bisected to gfs's measured latency (not its MACs)
    ((reached, aimed),) = matched
    assert aimed == pytest.approx(gfs, rel=1e-9) and reached == pytest.approx(gfs, rel=0.05)
    sentences = " ".join(summarize(results))
    assert f"gfs pruned to {budget['target']}" in sentences and "speed-up" in sentences
    write_json(tmp_path / "results.json", results)
    assert read_results(tmp_path / "results.json")["budget"] == budget


@pytest.mark.parametrize("budgets", [{}, {"macs": 0.5, "latency": "L"}])
def test_a_comparison_takes_exactly_one_budget(budgets) -> None:
    budgets = {k: Latency(0.5) if v == "L" else v for k, v in budgets.items()}
    with pytest.raises(ConfigError, match="one budget"):
        CompareConfig(finetune=FINETUNE, **budgets)
