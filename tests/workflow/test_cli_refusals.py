"""Bad input to the command line: each is one line on stderr with exit status 2, and nothing
the user had is overwritten, no code from a data file runs."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfsprune import Macs, PruneConfig, prune, save
from gfsprune.models import get
from gfsprune.workflow import jobs
from gfsprune.workflow.cli import main
from gfsprune.workflow.methods import METHODS
from tests.workflow.runs import FAST, one_line_error

COMPARE = ["compare", "--macs", "0.5", "--epochs", "1", "--methods", "gfs,random", *FAST]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def finetuned(pruned: Path, tmp_path: Path) -> Path:
    out = tmp_path / "finetuned"
    assert main(["finetune", str(pruned), "--epochs", "1", "--out", str(out), *FAST]) == 0
    return out


@pytest.mark.parametrize(
    ("argv", "command", "victim", "message"),
    [
        (
            ["prune", "--model-dir", "{ck}", "--macs", "0.5", "--out", "{ft}"],
            "prune",
            "{ft}",
            "holds the output of `gfsprune finetune`, which a prune run would replace",
        ),
        (
            ["prune", "--model-dir", "{pr}", "--macs", "0.5", "--out", "{ck}", "--resume"],
            "prune",
            "{ck}",
            "holds the output of `gfsprune train`",
        ),
        (
            ["finetune", "{ft}", "--epochs", "1", "--out", "{pr}"],
            "finetune",
            "{pr}",
            "holds the output of `gfsprune prune`, which a finetune run would replace",
        ),
        (
            [
                "train",
                "--model",
                "digits_cnn",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--out",
                "{pr}",
            ],
            "train",
            "{pr}",
            "holds the output of `gfsprune prune`, which a train run would replace",
        ),
        (
            ["compare", "--model-dir", "{ck}", "--macs", "0.5", "--epochs", "1", "--out", "{pr}"],
            "compare",
            "{pr}",
            "holds the output of `gfsprune prune`",
        ),
        (["demo", "--out", "{ck}"], "demo", "{ck}", "holds the output of `gfsprune train`"),
    ],
)
def test_another_runs_folder_is_never_overwritten(
    argv, command, victim, message, trained, pruned, finetuned, capsys
) -> None:
    fill = {"ck": str(trained), "pr": str(pruned), "ft": str(finetuned)}
    victim = Path(victim.format(**fill))
    before = _files(victim)
    assert main([*(a.format(**fill) for a in argv), *(FAST if command != "demo" else [])]) == 2
    assert message in one_line_error(capsys, command)
    assert _files(victim) == before


def test_a_folder_gfsprune_did_not_write_is_refused(trained: Path, tmp_path: Path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--out", str(tmp_path)]
    assert main([*argv, *FAST]) == 2
    assert "holds files gfsprune prune did not write" in one_line_error(capsys, "prune")
    assert _files(tmp_path) == {"thesis.tex": b"years of work"}


@pytest.mark.parametrize("out", ["{tmp}/file/out", "/proc/gfsprune-out"])
def test_compare_refuses_an_unwritable_out_before_any_work(
    out: str, trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "file").write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("compared before checking --out")

    monkeypatch.setattr(jobs, "compare", no_work)
    argv = [*COMPARE, "--model-dir", str(trained), "--out", out.format(tmp=tmp_path)]
    assert main(argv) == 2
    assert "choose another output folder (--out)" in one_line_error(capsys, "compare")


def test_an_interrupted_compare_keeps_its_rows_and_resumes(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "compare"
    argv = [*COMPARE, "--model-dir", str(trained), "--out", str(out)]

    def interrupt(context):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(METHODS["random"], "build", interrupt)
        assert main(argv) == 130
    assert "again with --resume" in capsys.readouterr().err
    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == ["methods"] and list(saved["methods"]) == ["gfs"]
    assert main(argv) == 2
    assert "holds an earlier compare run; pass --resume" in one_line_error(capsys, "compare")
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    assert "started with other epochs, finetune" in one_line_error(capsys, "compare")
    assert main([*argv, "--resume"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["gfs", "random"]
    assert results["methods"]["gfs"] == saved["methods"]["gfs"]  # reused, not run again


def _damaged_copy(trained: Path, tmp_path: Path, name: str, change) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(trained, folder)
    document = json.loads((folder / name).read_text())
    change(document)
    (folder / name).write_text(json.dumps(document))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(options=None), "field 'options' must be an object, got None"),
        (lambda d: d.update(options=[1]), "field 'options' must be an object, got [1]"),
        (lambda d: d.update(name=3), "field 'name' must be a string, got 3"),
        (
            lambda d: d["options"].update(num_classes=1e9),
            "field 'options.num_classes' must be an integer, got 1000000000.0",
        ),
        (
            lambda d: d["options"].update(num_classes=10**9),
            "field 'options.num_classes' must be an integer in [1, 65536]",
        ),
        (lambda d: d.update(input_shape=[1, -8, 8]), "'input_shape[1]' must be an integer"),
        (lambda d: d.pop("data"), "field 'data' is missing"),
        (lambda d: d.update(format="other"), "is not a 'gfsprune-model' file"),
    ],
)
def test_a_damaged_model_json_is_one_line(change, message, trained, tmp_path, capsys):
    folder = _damaged_copy(trained, tmp_path, "model.json", change)
    assert main(["eval", str(folder)]) == 2
    err = one_line_error(capsys, "eval")
    assert message in err and str(folder / "model.json") in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("layers"), "field 'layers' is missing"),
        (lambda d: d.update(layers=None), "field 'layers' must be a list"),
        (lambda d: d.update(layers="conv"), "field 'layers' must be a list"),
        (lambda d: d["layers"][0].update(kept=None), "field 'layers[0].kept' must be a list"),
        (lambda d: d["example_inputs"].update(dtype="x"), "must be a torch dtype name"),
        (lambda d: d["example_inputs"].pop("dtype"), "'example_inputs.dtype' is missing"),
        (lambda d: d["example_inputs"].update(shape=[1, -1, 8, 8]), "'example_inputs.shape[1]'"),
        (lambda d: d["example_inputs"].update(shape=[10**4] * 4), "at most 67,108,864 values"),
        (lambda d: d["metadata"].update(options=[]), "field 'metadata.options' must be an object"),
    ],
)
def test_a_damaged_plan_json_is_one_line(change, message, pruned, tmp_path, capsys):
    folder = _damaged_copy(pruned, tmp_path, "plan.json", change)
    assert main(["finetune", str(folder), "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys, "finetune")
    assert message in err and str(folder / "plan.json") in err
    assert not (tmp_path / "o").exists()


def test_a_folder_saved_from_python_says_what_to_add(tmp_path: Path, capsys) -> None:
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    result = prune(
        get("digits_cnn"),
        data,
        data[0][0][:1],
        target=Macs(0.5),
        progress=False,
        config=PruneConfig(candidates=4),
    )
    save(result, tmp_path / "saved")
    assert main(["eval", str(tmp_path / "saved")]) == 2
    err = one_line_error(capsys, "eval")
    assert "does not say which model it prunes" in err
    assert 'metadata={"name": "resnet20", "options": {"num_classes": 10}' in err
    options = {"num_classes": 10}
    info = {"name": "digits_cnn", "options": options, "data": "digits", "input_shape": [1, 8, 8]}
    save(result, tmp_path / "described", metadata=info)
    assert main(["eval", str(tmp_path / "described")]) == 0


def test_eval_never_runs_code_from_the_models_data_folder(
    trained: Path, tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    folder = _damaged_copy(
        trained, tmp_path, "model.json", lambda d: d.update(data=f"cifar10:{cifar}")
    )
    assert main(["eval", str(folder)]) == 2
    assert "names builtins.eval, which a data file has no use for" in one_line_error(capsys, "eval")
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "finetune", "eval", "compare", "prune"])
def test_cuda_on_a_machine_without_it_is_one_line(command, trained, pruned, tmp_path, capsys):
    argv = {
        "train": ["train", "--model", "digits_cnn", "--data", "digits", "--epochs", "1"],
        "finetune": ["finetune", str(pruned), "--epochs", "1"],
        "eval": ["eval", str(pruned)],
        "compare": [*COMPARE, "--model-dir", str(trained)],
        "prune": ["prune", "--model-dir", str(trained), "--macs", "0.5"],
    }[command]
    out = [] if command == "eval" else ["--out", str(tmp_path / "o")]
    assert main([*argv, *out, "--device", "cuda"]) == 2
    assert "CUDA" in one_line_error(capsys, command)
    assert not (tmp_path / "o").exists()


def test_an_unreachable_budget_is_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "prune",
        "--model-dir",
        str(trained),
        "--macs",
        "0.99",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, *FAST]) == 2
    assert "0.99" in one_line_error(capsys, "prune")
    assert not (tmp_path / "o" / "plan.json").exists()


@pytest.mark.parametrize("command", [["demo"], ["compare", "--model-dir", "x"]])
def test_compare_and_demo_refuse_torchrun(command, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [*command, "--out", str(tmp_path / "o")]
    if command[0] == "compare":
        argv += ["--macs", "0.5", "--epochs", "1"]
    assert main(argv) == 2
    err = one_line_error(capsys, command[0])
    assert f"run `gfsprune {command[0]}` without torchrun" in err
    assert not (tmp_path / "o").exists()


def test_output_piped_into_a_closed_reader_ends_quietly(trained: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfsprune", "eval", str(trained)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""
