"""The command line end to end on digits: train, prune, finetune, eval, compare, demo; resume
after an interruption; bad input rejected in one line with exit status 2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from gfsprune.core import latency_cost
from gfsprune.core import strategies as channels
from gfsprune.core.counting import count
from gfsprune.errors import ConfigError
from gfsprune.workflow import compare as compare_module
from gfsprune.workflow import jobs as workflow
from gfsprune.workflow.cli import main
from gfsprune.workflow.methods import METHODS, TorchPruning
from gfsprune.workflow.train import TrainConfig
from tests.core.test_latency_cost import fake_timer
from tests.workflow.runs import FAST, one_line_error, shell_error
from tests.workflow.test_cli_models import SPEC_ARGUMENT_ERRORS, SPEC_REFUSALS


def test_train_writes_a_folder_that_rebuilds_the_model(trained: Path) -> None:
    info = json.loads((trained / "model.json").read_text())
    assert info["name"] == "digits_cnn" and info["data"] == "digits"
    assert info["options"] == {
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 8,
        "width_mult": 0.5,
    }
    assert info["pretrain"]["epochs"] == 2 and len(info["history"]) == 2
    assert (trained / "train_state.pt").is_file()
    model, loaded = workflow.load_model(trained)
    assert loaded.input_shape == (1, 8, 8)
    assert model.features[0][0].out_channels == 8  # 16 channels at width 0.5


def test_train_refuses_to_overwrite_and_resumes_a_finished_run(trained: Path, capsys) -> None:
    argv = [
        "train",
        "--model",
        "digits_cnn",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--width-mult",
        "0.5",
        "--lr",
        "0.05",
        "--out",
        str(trained),
        *FAST,
    ]
    before = (trained / "model.safetensors").read_bytes()
    assert main(argv) == 2
    assert "pass --resume to continue it" in one_line_error(capsys, "train")
    assert main([*argv, "--resume"]) == 0  # both epochs are done: nothing left to train
    assert (trained / "model.safetensors").read_bytes() == before


def test_prune_prints_costs_and_accuracy_and_saves_a_loadable_model(
    trained: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--model-dir",
                str(trained),
                "--params",
                "0.6",
                "--out",
                str(out),
                "--candidates",
                "4",
                *FAST,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert f"{plan['params_before']:,}" in printed and f"{plan['params_after']:,}" in printed
    assert "accuracy" in printed and "MACs" in printed
    speedups = re.findall(r"ms b=(1|64) +([\d.]+) +([\d.]+) +([\d.]+)x", printed)
    assert [b for b, *_ in speedups] == ["1", "64"]
    for _, before, after, ratio in speedups:
        assert float(ratio) == pytest.approx(float(before) / float(after), rel=0.02)
    assert plan["metadata"]["name"] == "digits_cnn"
    model, info = workflow.load_model(out)
    assert count(model, info.example_inputs()) == (plan["macs_after"], plan["params_after"])
    assert plan["params_after"] / plan["params_before"] == pytest.approx(0.6, abs=0.05)


def test_an_interrupted_prune_resumes_to_the_same_plan(
    trained: Path, pruned: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "interrupted"
    argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--out", str(out), *FAST]
    real = channels.select_layer
    calls = []

    def interrupt_after_one_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        # ``gfsprune.core.prune`` is also the function the package exports: patch the module.
        patch.setattr(sys.modules["gfsprune.core.prune"], "select_layer", interrupt_after_one_layer)
        assert main(argv) == 130
    assert "again with --resume" in capsys.readouterr().err
    assert len(json.loads((out / "progress.json").read_text())["plan"]) == 1
    assert not (out / "plan.json").exists()
    assert main(argv) == 2  # progress exists: refused without --resume
    assert "--resume" in one_line_error(capsys, "prune")
    assert main([*argv, "--resume"]) == 0
    resumed = json.loads((out / "plan.json").read_text())["layers"]
    assert resumed == json.loads((pruned / "plan.json").read_text())["layers"]


def test_resume_with_other_options_is_refused(pruned: Path, trained: Path, capsys) -> None:
    argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--out", str(pruned)]
    assert main([*argv, "--resume", "--no-progress", "--batch-size", "32"]) == 2
    assert "other batch_size (--batch-size 64)" in one_line_error(capsys, "prune")


def test_prune_and_eval_report_a_latency_budget(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(latency_cost, "median_seconds", fake_timer([]))  # deterministic
    monkeypatch.setenv("GFSPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "pruned"
    argv = ["prune", "--model-dir", str(trained), "--latency", "0.6", "--out", str(out)]
    assert main([*argv, "--latency-batch", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "target   Latency(ratio=0.6, batch=2, channels_last=False), at batch 2:" in printed
    after = json.loads((out / "plan.json").read_text())["metrics_after"]
    before = json.loads((out / "plan.json").read_text())["metrics_before"]
    assert after["latency"] / before["latency"] == pytest.approx(0.6, abs=0.05)
    assert f"{1e3 * after['latency']:.3f} ms" in printed
    assert f"speed-up {before['latency'] / after['latency']:.2f}x" in printed
    assert list((tmp_path / "cache").glob("latency-*.json"))
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "latency budget, when pruned, at batch 2:" in printed
    assert f"{1e3 * after['latency_predicted']:.3f} ms" in printed


def test_a_latency_budget_the_device_cannot_meet_exits_2_naming_the_nearest_ratio(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(latency_cost, "median_seconds", fake_timer([]))
    monkeypatch.setenv("GFSPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["prune", "--model-dir", str(trained), "--latency", "0.001", "--out", str(tmp_path)]
    assert main([*argv, *FAST]) == 2
    error = one_line_error(capsys, "prune")
    assert "Latency(0.001) cannot be reached" in error and "ask for a ratio of at least 0." in error


def test_compare_at_a_latency_budget_reports_it(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    timer = fake_timer([])  # deterministic: a model's seconds from its pieces' widths
    monkeypatch.setattr(latency_cost, "median_seconds", timer)
    monkeypatch.setattr(compare_module, "measure_latency", lambda m, *_, **__: timer(m, None))
    monkeypatch.setenv("GFSPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "compare"
    argv = ["compare", "--model-dir", str(trained), "--latency", "0.6", "--epochs", "0"]
    assert main([*argv, "--methods", "gfs,tp-l1", "--out", str(out), *FAST]) == 0
    budget = json.loads((out / "results.json").read_text())["budget"]
    assert budget["target"] == "Latency(ratio=0.6, batch=1, channels_last=False)"
    share = budget["latency_after"] / budget["latency_before"]
    assert f"({share:.1%} of the unpruned model's, a {1 / share:.2f}x speed-up)" in (
        capsys.readouterr().out
    )


def test_finetune_then_eval(pruned: Path, capsys) -> None:
    assert main(["finetune", str(pruned), "--epochs", "1", "--lr", "0.01", *FAST]) == 0
    out = pruned / "finetuned"
    assert f"wrote {out}" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["metadata"]["finetune"]["epochs"] == 1
    assert plan["layers"] == json.loads((pruned / "plan.json").read_text())["layers"]
    assert (out / "train_state.pt").is_file()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"MACs          {plan['macs_after']:,}" in printed
    assert "latency b=1" in printed and "latency b=64" in printed
    assert f"ms (CPU, {torch.get_num_threads()} thread(s), median)" in printed
    assert "GPU" not in printed  # measured only where the job runs on one
    found = workflow.evaluate_dir(out)
    assert f"accuracy      {found.scores['acc']:.2%}" in printed
    assert found.latency.cpu[1] > 0 and found.latency.cpu[64] > 0 and not found.latency.gpu


def test_weights_go_with_a_described_model_not_a_folder(trained: Path) -> None:
    with pytest.raises(ConfigError, match="weights= goes with a model described by a ModelInfo"):
        workflow.evaluate_dir(trained, weights=trained / "model.safetensors")


def test_eval_reads_a_trained_model_folder(trained: Path, capsys) -> None:
    assert main(["eval", str(trained)]) == 0
    model, info = workflow.load_model(trained)
    macs, params = count(model, info.example_inputs())
    printed = capsys.readouterr().out
    assert f"MACs          {macs:,}" in printed and f"params        {params:,}" in printed


def test_compare_writes_results_report_and_plots(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                "--model-dir",
                str(trained),
                "--macs",
                "0.5",
                "--epochs",
                "0,1",
                "--out",
                str(out),
                "--candidates",
                "0",
                *FAST,
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"base", "methods"}
    latency = {"latency_b1", "latency_b64"}
    assert set(results["base"]) == {"acc", "loss", "macs", "params", *latency}
    assert list(results["methods"]) == list(METHODS)
    keys = {
        "macs",
        "params",
        "acc_pruned",
        "loss_pruned",
        "seconds",
        "epochs",
        *latency,
    }
    for name, row in results["methods"].items():
        assert set(row) == keys and all(row[k] > 0 for k in latency)
        assert set(row["epochs"]) == {"0", "1"}
        if isinstance(METHODS[name], TorchPruning):  # its own widths, at about gfs's MACs
            assert row["macs"] == pytest.approx(results["methods"]["gfs"]["macs"], rel=0.15)
            continue
        assert (row["macs"], row["params"]) == (
            results["methods"]["gfs"]["macs"],
            results["methods"]["gfs"]["params"],
        )
    printed = capsys.readouterr().out
    base_row = next(line for line in printed.splitlines() if line.startswith("| base "))
    assert base_row.split("|")[2].strip() == f"{results['base']['macs']:,}"
    report = (out / "report.md").read_text()
    assert "| scratch " in report and "Greedy forward selection" in report
    for png in ("accuracy.png", "widths.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["job"] == "compare" and run["context"]["layers"][0]["width"] == 8
    assert run["settings"]["scratch"]["epochs"] == 2 + 1  # pre-training plus fine-tuning


def test_compare_recalibrates_every_method_and_reports_each_budget(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "compare"
    argv = ["compare", "--model-dir", str(trained), "--macs", "0.5", "--out", str(out)]
    options = ["--epochs", "2,0", "--methods", "gfs,l1", "--recalibrate", "--candidates", "4"]
    assert main([*argv, *options, *FAST]) == 0
    rows = json.loads((out / "results.json").read_text())["methods"]
    assert list(rows) == ["gfs", "l1"]
    for row in rows.values():
        assert set(row["epochs"]) == {"0", "2"}
        # Recalibrated statistics change the loss measured before any fine-tuning.
        assert row["epochs"]["0"]["loss"] != row["loss_pruned"]
    report = (out / "report.md").read_text()
    assert "acc 0 ep" in report and "acc 2 ep" in report


@pytest.mark.slow
def test_demo_is_deterministic_for_its_seed(tmp_path: Path, monkeypatch, capsys) -> None:
    tiny = workflow.DemoConfig(
        pretrain=TrainConfig(epochs=1, batch_size=64, lr=0.05),
        finetune=TrainConfig(epochs=1, batch_size=64, lr=0.01),
    )
    monkeypatch.setattr(workflow, "DEMO", tiny)
    runs = []
    for name in ("a", "b"):
        assert main(["demo", "--out", str(tmp_path / name), "--no-progress"]) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        for row in [results["base"], *results["methods"].values()]:
            for timing in ("seconds", "latency_b1", "latency_b64"):
                row.pop(timing, None)  # measured, not deterministic
        runs.append(results)
    assert runs[0] == runs[1]
    assert list(runs[0]["methods"]) == list(METHODS)
    assert "| gfs " in capsys.readouterr().out
    assert (tmp_path / "a" / "model" / "model.json").is_file()


@pytest.mark.parametrize(
    ("argv", "command", "message"),
    [
        (
            ["prune", "--model-dir", "{tmp}/none", "--macs", "0.5", "--out", "{tmp}/o"],
            "prune",
            "model folder '{tmp}/none' does not exist",
        ),
        (
            ["prune", "--model-dir", "{ck}", "--macs", "1.5", "--out", "{tmp}/o"],
            "prune",
            "must be a float in the open interval (0, 1)",
        ),
        (
            [
                "prune",
                "--model-dir",
                "{ck}",
                "--macs",
                "0.5",
                "--out",
                "{tmp}/o",
                "--candidates",
                "-1",
            ],
            "prune",
            "--candidates must be 0 (all) or a positive integer",
        ),
        (
            ["prune", "--model-dir", "{ck}", "--tolerance", "-1", "--out", "{tmp}/o"],
            "prune",
            "'eps' parameter of Tolerance must be a non-negative float",
        ),
        (
            [
                "prune",
                "--model-dir",
                "{ck}",
                "--latency",
                "0.5",
                "--latency-batch",
                "0",
                "--out",
                "{tmp}/o",
            ],
            "prune",
            "'batch' parameter of Latency must be a positive integer",
        ),
        (
            [
                "prune",
                "--checkpoint",
                "{ck}",
                "--macs",
                "0.5",
                "--out",
                "{tmp}/o",
                "--data",
                "synthetic:100",
            ],
            "prune",
            "but the model takes (1, 8, 8) in 10",
        ),
        (
            [
                "compare",
                "--model-dir",
                "{ck}",
                "--macs",
                "0.5",
                "--epochs",
                "1",
                "--out",
                "{tmp}/o",
                "--methods",
                "gfs,magic",
            ],
            "compare",
            "'magic' is unknown",
        ),
        (["finetune", "{tmp}", "--epochs", "1"], "finetune", "holds neither model.json"),
        (["eval", "{ck}", "--threads", "0"], "eval", "--threads must be an integer from 1 to"),
        (
            ["train", "--model", "nonet", "--data", "digits", "--epochs", "1", "--out", "{tmp}/o"],
            "train",
            "unknown model 'nonet'",
        ),
        (
            [
                "train",
                "--model",
                "digits_cnn",
                "--data",
                "mnist",
                "--epochs",
                "1",
                "--out",
                "{tmp}/o",
            ],
            "train",
            "unknown data spec 'mnist'",
        ),
        (
            [
                "train",
                "--model",
                "digits_cnn",
                "--data",
                "digits",
                "--epochs",
                "0",
                "--out",
                "{tmp}/o",
            ],
            "train",
            "'epochs' must be an integer >= 1",
        ),
        *SPEC_REFUSALS,
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], command: str, message: str, trained: Path, tmp_path: Path, capsys
) -> None:
    fill = {"tmp": str(tmp_path), "ck": str(trained)}
    assert main([a.format(**fill) for a in argv]) == 2
    assert message.format(**fill) in one_line_error(capsys, command)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["prune", "--model-dir", "c", "--macs", "0.5", "--params", "0.5", "--out", "o"],
            "argument --params: not allowed with argument --macs",
        ),
        (
            ["prune", "--model-dir", "c", "--out", "o"],
            "one of the arguments --macs --params --latency --tolerance is required",
        ),
        (
            ["compare", "--model-dir", "c", "--macs", "half", "--epochs", "1", "--out", "o"],
            "argument --macs: invalid float value: 'half'",
        ),
        (["finetune"], "the following arguments are required: --epochs"),
        (["theory", "--seed", "abc"], "--seed: expected an integer in [0, 2**63), got 'abc'"),
        (["theory", "--quick", "--fast"], "unrecognized arguments: --fast"),
        *SPEC_ARGUMENT_ERRORS,
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_model_folder_prints_no_traceback_from_the_shell(tmp_path: Path) -> None:
    assert "does not exist" in shell_error("eval", str(tmp_path / "missing"))


def test_demo_takes_a_device_and_refuses_one_this_machine_lacks(tmp_path: Path, capsys) -> None:
    argv = ["demo", "--out", str(tmp_path / "d"), "--no-progress", "--device", "cuda:99"]
    assert main(argv) == 2
    assert "cuda:99" in one_line_error(capsys, "demo")
    assert not (tmp_path / "d").exists()  # refused before any work


def test_the_default_thread_count_leaves_a_core_on_small_machines(monkeypatch) -> None:
    from gfsprune.workflow import cli

    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
        assert cli.default_threads() == 1
        monkeypatch.setattr(cli.os, "cpu_count", lambda: 16)
        assert cli.default_threads() == 2  # torch's own default, not more
        monkeypatch.setattr(cli.os, "cpu_count", lambda: None)
        assert cli.default_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_old_checkpoint_flag_still_names_the_model_folder(capsys) -> None:
    from gfsprune.workflow.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["prune", "--checkpoint", "d", "--macs", "0.5", "--out", "o"])
    assert args.model_dir == "d"
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--help"])
    printed = capsys.readouterr().out
    assert "--model-dir DIR" in printed and "--checkpoint" not in printed


def test_the_library_s_option_names_are_printed_as_flags() -> None:
    from gfsprune.workflow.cli import _option_flags, as_flags, build_parser

    flags = _option_flags(build_parser())
    message = (
        "pass resume=True, or another folder (out=); pass model='f.py:net', a square "
        "input shape (input_shape=); snippets stay: gfsprune.load(DIR, model=SPEC)"
    )
    assert as_flags(message, flags) == (
        "pass --resume, or another folder (--out); pass --model 'f.py:net', a square "
        "input shape (--input-size); snippets stay: gfsprune.load(DIR, model=SPEC)"
    )
