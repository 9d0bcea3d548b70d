"""The command line on models given by spec (--model): timm with weights from disk, the user's
own code (never run on a folder's word), and the refusals."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gfsprune
from gfsprune.workflow.cli import main
from tests.workflow.runs import FAST, one_line_error

USER_CODE = """
from torch import nn

def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
"""
SELECT = ["--candidates", "2", "--schedule", "fast", "--batch-size", "8"]


def _imagefolder(root: Path, classes: int) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for c in range(classes):
            for i in range(count):
                path = root / split / f"class{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture
def user_net(tmp_path: Path) -> str:
    (tmp_path / "net.py").write_text(USER_CODE)
    return f"{tmp_path / 'net.py'}:make"


@pytest.mark.slow
def test_a_timm_model_with_weights_from_disk_prunes_then_evaluates_and_finetunes_flag_free(
    tmp_path: Path, capsys
) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    data = _imagefolder(tmp_path / "images", classes=10)
    torch.manual_seed(0)
    trained = timm.create_model("resnet18", pretrained=False, num_classes=10)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, weights)
    out = tmp_path / "p"
    argv = ["prune", "--model", "timm:resnet18", "--weights", str(weights), "--num-classes", "10"]
    argv += ["--data", f"imagefolder:{data}", "--macs", "0.5", "--out", str(out)]
    argv += ["--input-size", "3,16,16", "--allocator", "uniform", *SELECT, "--no-progress"]
    assert main(argv) == 0
    metadata = json.loads((out / "plan.json").read_text())["metadata"]
    assert metadata["name"] == "timm:resnet18" and metadata["input_shape"] == [3, 16, 16]
    assert metadata["weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metadata["options"]["num_classes"] == 10
    assert metadata["mean"] == list(timm.get_pretrained_cfg("resnet18").mean)
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["finetune", str(out), "--epochs", "1", *FAST]) == 0
    assert (out / "finetuned" / "plan.json").is_file()
    assert main(["eval", str(out / "finetuned")]) == 0


def test_the_users_own_code_runs_only_where_the_user_names_it(
    user_net: str, tmp_path: Path, capsys
) -> None:
    data = _imagefolder(tmp_path / "images", classes=2)
    out = tmp_path / "p"
    argv = ["prune", "--model", user_net, "--data", f"imagefolder:{data}", "--macs", "0.5"]
    assert (
        main([*argv, "--input-size", "3,16,16", "--out", str(out), *SELECT, "--no-progress"]) == 0
    )
    capsys.readouterr()

    assert main(["eval", str(out)]) == 2
    assert f"pass --model '{user_net}'" in one_line_error(capsys, "eval")
    with pytest.raises(gfsprune.ModelError, match=re.escape(f"pass model='{user_net}'")):
        gfsprune.load(out)

    assert main(["eval", str(out), "--model", user_net]) == 0
    loaded = gfsprune.load(out, model=user_net)
    assert loaded(torch.randn(2, 3, 16, 16)).shape == (2, 2)
    finetuned = tmp_path / "f"
    argv = ["finetune", str(out), "--model", user_net, "--epochs", "1", "--out", str(finetuned)]
    assert main([*argv, *FAST]) == 0
    assert main(["eval", str(finetuned)]) == 2
    one_line_error(capsys, "eval")


def test_a_spec_without_a_folder_evaluates_and_finetunes_to_a_checkpoint(
    tmp_path: Path, capsys
) -> None:
    data = _imagefolder(tmp_path / "images", classes=2)
    spec = ["--model", "resnet20", "--data", f"imagefolder:{data}", "--input-size", "3,16,16"]
    assert main(["eval", *spec]) == 0
    out = tmp_path / "trained"
    assert main(["finetune", *spec, "--epochs", "1", "--out", str(out), *FAST]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["name"] == "resnet20" and info["input_shape"] == [3, 16, 16]
    assert info["mean"] == [0.485, 0.456, 0.406]  # ImageNet's: resnet20 does not say
    assert main(["eval", str(out)]) == 0


def test_a_folder_saved_from_python_with_a_model_spec_is_read_by_the_cli(
    tmp_path: Path, capsys
) -> None:
    data = _imagefolder(tmp_path / "images", classes=2)
    torch.manual_seed(0)
    net = gfsprune.models.get("resnet20", num_classes=2)
    batch = [(torch.randn(4, 3, 16, 16), torch.randint(0, 2, (4,)))]
    result = gfsprune.prune(
        net,
        batch,
        batch[0][0][:1],
        target=gfsprune.Macs(0.5),
        progress=False,
        config=gfsprune.PruneConfig(candidates=2, schedule="fast"),
    )
    metadata = {"name": "resnet20", "options": {"num_classes": 2}}
    gfsprune.save(result, tmp_path / "saved", metadata=metadata)
    torch.testing.assert_close(
        gfsprune.load(tmp_path / "saved")(batch[0][0]), result.model.eval()(batch[0][0])
    )
    assert main(["eval", str(tmp_path / "saved")]) == 2
    assert "does not record the data it was pruned on; pass it (--data)" in one_line_error(
        capsys, "eval"
    )
    assert main(["eval", str(tmp_path / "saved"), "--data", f"imagefolder:{data}"]) == 0


# The refusals of --model and its options join the command-line tables of tests/workflow/
# test_cli.py, whose tests run them: (argv, command, message) and (argv, message).
SPEC_REFUSALS = [
    (["eval"], "eval", "pass a folder (DIR) written by gfsprune, or --model SPEC"),
    (["eval", "--model", "resnet20"], "eval", "needs data; pass it (--data)"),
    (
        ["eval", "{tmp}", "--model", "resnet20", "--weights", "w.pth"],
        "eval",
        "--weights cannot change a folder's model",
    ),
    (
        ["prune", "--model-dir", "{tmp}", "--num-classes", "3", "--macs", "0.5", "--out", "o"],
        "prune",
        "--num-classes go(es) with --model",
    ),
    (
        ["eval", "--model", "timm:resnet81", "--data", "digits"],
        "eval",
        "unknown timm model 'resnet81'; did you mean resnet18",
    ),
    (
        ["eval", "--model", "resnet20", "--data", "digits", "--num-classes", "3"],
        "eval",
        "asked for 3 classes (--num-classes) but data 'digits' has 10",
    ),
    (
        ["eval", "--model", "resnet20", "--data", "digits", "--weights", "{tmp}/none.pth"],
        "eval",
        "does not exist; check the path",
    ),
    (
        ["finetune", "--model", "resnet20", "--data", "digits", "--epochs", "1"],
        "finetune",
        "pass --out",
    ),
]
SPEC_ARGUMENT_ERRORS = [
    (["prune", "--macs", "0.5", "--out", "o"], "one of the arguments --model-dir --model is"),
    (
        ["prune", "--model-dir", "c", "--model", "m", "--macs", "0.5", "--out", "o"],
        "argument --model: not allowed with argument --model-dir",
    ),
    (["eval", "--model", "m", "--input-size", "3,32"], "expected 1 or 3 comma-separated ints"),
]


VIEW_NET = """
import torch.nn.functional as F
from torch import nn

class Net(nn.Module):
    def __init__(s):
        super().__init__(); s.c1 = nn.Conv2d(1, 16, 3, padding=1)
        s.c2 = nn.Conv2d(16, 32, 3, padding=1); s.fc = nn.Linear(32 * 2 * 2, 10)
    def forward(s, x):
        x = F.max_pool2d(F.relu(s.c1(x)), 2); x = F.max_pool2d(F.relu(s.c2(x)), 2)
        return s.fc(x.view(x.size(0), -1))
"""


def test_a_users_view_head_cnn_prunes_with_default_options(tmp_path: Path, capsys) -> None:
    """Issue 28's model (sized for the 8x8 digits): ``Net()`` takes no options and prunes
    with the default ones; its ``.view`` head fails channels-last, so the network loss's
    batched scoring falls back and says so."""
    (tmp_path / "net.py").write_text(VIEW_NET)
    spec = f"{tmp_path / 'net.py'}:Net"
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(gfsprune.models.get(spec).state_dict(), weights)
    argv = ["prune", "--model", spec, "--weights", str(weights), "--data", "digits"]
    flags = ["--macs", "0.5", "--batch-size", "8", "--no-progress"]
    out = tmp_path / "p"
    assert main([*argv, *flags, "--out", str(out)]) == 0
    assert gfsprune.load(out, model=spec)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    loss = tmp_path / "loss"
    assert main([*argv, *flags, *SELECT, "--objective", "loss", "--out", str(loss)]) == 0
    assert "own memory format" in capsys.readouterr().err
    assert gfsprune.load(loss, model=spec)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
