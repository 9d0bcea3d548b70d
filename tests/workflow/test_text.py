"""text:FILE: documents tokenised by the model folder's tokenizer into blocks (or labelled
lines), refused in one line where they cannot be; prune selects on them by distillation (or
by the labels, for a classifier) and reports it, from the command line too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gfsprune.core.losses import DistillLoss, TeacherBatches
from gfsprune.errors import ConfigError, DataError
from gfsprune.workflow.cli import main
from gfsprune.workflow.data import load_data, make_loader
from gfsprune.workflow.text import evaluate_text, load_text, text_objective
from tests import hf_nets

pytest.importorskip("transformers")


def _text(path: Path, count: int, *, labelled: bool = False) -> Path:
    """``count`` documents of 3 to 9 words of the tiny tokenizer's vocabulary."""
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(count):
        size = int(torch.randint(3, 10, (), generator=g))
        words = " ".join(f"w{int(w)}" for w in torch.randint(2, 64, (size,), generator=g))
        lines.append(f"{i % 3}\t{words}" if labelled else words)
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    """An hf:DIR spec of a tiny LLaMA with a word-level tokenizer."""
    folder = tmp_path_factory.mktemp("llama")
    return f"hf:{hf_nets.save_folder(folder, hf_nets.raw('llama', 'ForCausalLM'))}"


def test_documents_are_joined_by_the_end_token_and_cut_into_blocks(tmp_path, llama) -> None:
    (tmp_path / "t.txt").write_text("w2 w3 w4\n\nw5 w6\nw7 w8 w9 w10 w11\n", encoding="utf-8")
    data = load_text(f"text:{tmp_path / 't.txt'}", model=llama, length=4)
    samples = [data.train[i] for i in range(len(data.train))] + [data.test[0]]
    rows = sorted(sample["input_ids"].tolist() for sample in samples)
    assert rows == [[2, 3, 4, 1], [5, 6, 1, 7], [8, 9, 10, 11]]  # 1: [SEP], the end token
    assert all(sample["attention_mask"].tolist() == [1] * 4 for sample in samples)
    assert (len(data.test), data.input_shape, data.labelled, data.num_classes) == (
        1,
        (4,),
        False,
        0,
    )
    longer = _text(tmp_path / "long.txt", 20)
    assert load_text(f"text:{longer}", model=llama).input_shape == (16,)  # the model's limit


def test_labelled_lines_are_one_padded_sample_each(tmp_path, llama) -> None:
    path = tmp_path / "t.txt"
    path.write_text("0\tw2 w3\n2\tw4 w5 w6 w7 w8 w9\n1\tw9\n", encoding="utf-8")
    data = load_text(f"text:{path}", model=llama, length=4)
    assert (data.labelled, data.num_classes, len(data.train), len(data.test)) == (True, 3, 2, 1)
    inputs, label = next(s for s in (data.train[0], data.train[1], data.test[0]) if s[1] == 0)
    assert inputs["input_ids"].tolist() == [2, 3, 0, 0]
    assert inputs["attention_mask"].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    ("content", "options", "error", "message"),
    [
        (None, {}, DataError, r"^text file '.*t.txt' of 'text:.*' does not exist; check the path"),
        ("\n \n", {}, DataError, r"^text file '.*' has no text; write one document per line"),
        ("w2 w3\n", {"length": 17}, DataError, r"^sequences of 17 tokens are longer than hf:.* "),
        ("w2 w3\n", {"length": 4}, DataError, r"has 3 tokens, fewer than two samples of 4; add"),
        ("0\tw2\nw3\n", {}, DataError, r"non-blank line 2 is not one; label every line, or none"),
        ("w2 w3\n", {"model": "resnet20"}, ConfigError, r"'resnet20' has none. Pass --model hf"),
        ("w2 w3\n", {"length": 1}, ConfigError, r"must be an integer >= 2. Got 1 instead"),
    ],
    ids=["missing", "empty", "too-long", "too-short", "mixed", "not-hf", "length"],
)
def test_text_that_cannot_be_used_is_refused_in_one_line(
    tmp_path, llama, content, options, error, message
) -> None:
    if content is not None:
        (tmp_path / "t.txt").write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message) as caught:
        load_text(f"text:{tmp_path / 't.txt'}", **{"model": llama, **options})
    assert "\n" not in str(caught.value)


def test_text_needs_a_model_and_a_tokenizer(tmp_path) -> None:
    with pytest.raises(DataError, match=r"is text, tokenised by a model's tokenizer: give it"):
        load_data("text:notes.txt")
    folder = hf_nets.save_folder(tmp_path / "m", hf_nets.raw("llama"), tokenizer=False)
    with pytest.raises(ConfigError, match=r"needs the tokenizer of hf:.*, but the folder has"):
        load_text(f"text:{_text(tmp_path / 't.txt', 4)}", model=f"hf:{folder}")


def test_the_objective_distils_unless_a_classifier_has_labels(tmp_path, llama) -> None:
    plain = load_text(f"text:{_text(tmp_path / 'a.txt', 20)}", model=llama, length=8)
    labelled = load_text(f"text:{_text(tmp_path / 'b.txt', 20, labelled=True)}", model=llama)
    loader = make_loader(plain.train, batch_size=4, shuffle=False)
    for model, kind in (
        (hf_nets.tiny("llama", "ForCausalLM"), "kl"),
        (hf_nets.tiny("llama"), "mse"),
    ):
        batches, loss_fn = text_objective(model, loader, plain)
        assert isinstance(batches, TeacherBatches) and loss_fn == DistillLoss(kind)
    classifier = hf_nets.tiny("llama", "ForSequenceClassification", num_labels=3, pad_token_id=0)
    labelled_loader = make_loader(labelled.train, batch_size=4, shuffle=False)
    assert text_objective(classifier, labelled_loader, labelled) == (labelled_loader, None)
    batches, loss_fn = text_objective(hf_nets.tiny("llama"), labelled_loader, labelled)
    assert loss_fn == DistillLoss("mse") and batches.labelled  # no head: the labels are dropped
    scores = evaluate_text(classifier, labelled, teacher=classifier)
    assert scores["distill"] == 0 and 0 <= scores["acc"] <= 1 and scores["loss"] > 0


def test_an_hf_language_model_prunes_on_text_from_the_command_line(tmp_path, llama, capsys):
    text = _text(tmp_path / "t.txt", 60)
    argv = ["--model", llama, "--data", f"text:{text}", "--threads", "1", "--no-progress"]
    out = tmp_path / "pruned"
    common = ["--macs", "0.5", "--candidates", "4", "--batch-size", "8", "--input-size", "8"]
    assert main(["prune", *argv, *common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    widths = re.findall(r"model\.model\.layers\.\d\.(?:self_attn|mlp) (\d+)->(\d+)", printed)
    assert len(widths) == 4 and any(int(b) < int(a) for a, b in widths)  # heads and neurons
    assert "distill        0.0000" in printed and "accuracy" in printed
    assert main(["eval", str(out), "--threads", "1"]) == 0
    assert "distill " in capsys.readouterr().out
    assert main(["finetune", str(out), "--epochs", "1", "--threads", "1"]) == 2
    assert "finetune trains on image classification data; text data" in capsys.readouterr().err
