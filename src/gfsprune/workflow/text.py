"""Text data for transformers: ``text:FILE``, tokenised by an ``hf:DIR`` model's tokenizer.

``FILE`` holds one document per line (blank lines are skipped). Two forms:

- plain lines: the documents are tokenised, joined by the tokenizer's end-of-text token (if
  it has one) and cut into blocks of ``length`` tokens (the remainder is dropped); a sample
  is ``{"input_ids": (length,), "attention_mask": (length,)}`` and has no label, so pruning
  distils from the unpruned model (:func:`text_objective`);
- ``LABEL<TAB>TEXT`` on every line (``LABEL`` a non-negative integer): each line is one
  sample, truncated or padded to ``length`` (padding masked out), with its label; a model
  with a classification head is then pruned and scored on the labels, any other model
  distils.

A tenth of the samples (at least one), drawn with a fixed seed, is the test split, as every
data set here always loads with its default seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gfsprune import models
from gfsprune._inputs import model_device, move, run_model
from gfsprune.core.losses import DistillLoss, distill
from gfsprune.errors import ConfigError, DataError
from gfsprune.models.hf import TransformersOutput, load_tokenizer
from gfsprune.workflow.data import DataBundle, make_loader

__all__ = ["PREFIX", "TextData", "evaluate_text", "load_text", "text_objective"]

PREFIX = "text:"
#: Tokens per sample unless given (or fewer, where the model allows fewer).
DEFAULT_LENGTH = 128
# The test split: this share of the samples, drawn with a fixed seed.
_TEST_SHARE, _SPLIT_SEED = 10, 0


@dataclass(frozen=True)
class TextData(DataBundle):
    """Token samples of a ``text:FILE`` spec: a :class:`DataBundle` whose ``input_shape`` is
    ``(length,)``; with ``labelled`` every sample is ``(inputs, label)`` (``num_classes``
    labels), otherwise its inputs alone and ``num_classes`` is 0."""


class _Samples(Dataset):
    """Token rows ``(N, length)`` with their attention masks, and labels where given."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> object:
        inputs = {"input_ids": self.ids[index], "attention_mask": self.mask[index]}
        return inputs if self.labels is None else (inputs, int(self.labels[index]))


def load_text(spec: str, *, model: str, length: int | None = None) -> TextData:
    """The samples of ``text:FILE``, tokenised by the tokenizer of the ``hf:`` model ``model``.

    Args:
        spec: ``text:FILE``.
        model: The model spec; its folder must hold a tokenizer.
        length: Tokens per sample (default: 128, or the model's own limit where lower).

    Raises:
        ConfigError: the model is not ``hf:DIR`` or has no tokenizer.
        DataError: the file is missing, empty, mixes labelled and plain lines, too short
            for two samples, or ``length`` exceeds the model's position embeddings.
    """
    if not model.startswith("hf:"):
        raise ConfigError(
            f"{spec!r} is tokenised by the tokenizer of an hf:DIR model; {model!r} has none. "
            "Pass --model hf:DIR"
        )
    path = Path(spec.removeprefix(PREFIX)).expanduser()
    if not path.is_file():
        raise DataError(f"text file '{path}' of {spec!r} does not exist; check the path.")
    limit = models.data_config(model).get("max_length")
    length = min(DEFAULT_LENGTH, limit or DEFAULT_LENGTH) if length is None else length
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ConfigError(f"the sequence length must be an integer >= 2. Got {length!r} instead.")
    if limit is not None and length > limit:
        raise DataError(
            f"sequences of {length} tokens are longer than {model} allows (its position "
            f"embeddings end at {limit}); pass --input-size {limit} or less"
        )
    lines = [line for line in _read_lines(path) if line.strip()]
    if not lines:
        raise DataError(
            f"text file '{path}' has no text; write one document per line (or "
            "LABEL<TAB>TEXT lines)."
        )
    tokenizer = load_tokenizer(model.removeprefix("hf:"))
    labels = _labels(lines, path)
    if labels is None:
        ids, mask = _blocks(tokenizer, lines, length, path)
    elif len(lines) < 2:
        raise DataError(
            f"text file '{path}' has one labelled line; give at least two (a tenth, at least "
            "one, is held out for testing)"
        )
    else:
        ids, mask = _padded(tokenizer, [line.partition("\t")[2] for line in lines], length)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    split = max(1, len(ids) // _TEST_SHARE)
    test, train = order[:split], order[split:]
    pick = (lambda rows: None) if labels is None else (lambda rows: labels[rows])
    return TextData(
        name=spec,
        train=_Samples(ids[train], mask[train], pick(train)),
        test=_Samples(ids[test], mask[test], pick(test)),
        num_classes=0 if labels is None else int(labels.max()) + 1,
        input_shape=(length,),
        labelled=labels is not None,
    )


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"text file '{path}' is not UTF-8 ({err}); save it as UTF-8.") from err


def _labels(lines: list[str], path: Path) -> torch.Tensor | None:
    """The labels of ``LABEL<TAB>TEXT`` lines, ``None`` for plain lines; mixed is refused."""
    heads = [line.partition("\t") for line in lines]
    marked = [bool(tab) and label.strip().isdigit() for label, tab, _ in heads]
    if not any(marked):
        return None
    if not all(marked):
        line = marked.index(False) + 1
        raise DataError(
            f"text file '{path}' has LABEL<TAB>TEXT lines but non-blank line {line} is not "
            "one; label every line, or none"
        )
    return torch.tensor([int(label) for label, _, _ in heads])


def _blocks(tokenizer, lines: list[str], length: int, path: Path) -> tuple[torch.Tensor, ...]:
    """The documents' tokens, joined by the end-of-text token, in rows of ``length``."""
    end = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    stream: list[int] = []
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        stream += ids + end
    count = len(stream) // length
    if count < 2:
        raise DataError(
            f"text file '{path}' has {len(stream)} tokens, fewer than two samples of {length}; "
            "add text or pass a shorter --input-size"
        )
    ids = torch.tensor(stream[: count * length]).view(count, length)
    return ids, torch.ones_like(ids)


def _padded(tokenizer, texts: list[str], length: int) -> tuple[torch.Tensor, ...]:
    """Each text's tokens (with the tokenizer's special tokens), truncated or padded to
    ``length``; the mask is 0 on the padding."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(texts), length), pad, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, tokens in enumerate(tokenizer(texts)["input_ids"]):
        tokens = tokens[:length]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def _uses_labels(model: nn.Module, data: TextData) -> bool:
    """Labels are used where the data has them and the model is a classifier."""
    return data.labelled and _kind(model) == "classifier"


def _kind(model: nn.Module) -> str:
    """``"lm"`` (next-token logits), ``"classifier"`` (class logits) or ``"encoder"``."""
    if not isinstance(model, TransformersOutput) or model.field != "logits":
        return "encoder"
    name = type(model.model).__name__
    return "lm" if name.endswith(("ForCausalLM", "LMHeadModel")) else "classifier"


def text_objective(
    model: nn.Module, loader: DataLoader, data: TextData
) -> tuple[Iterable, DistillLoss | None]:
    """What :func:`gfsprune.prune` selects by on text: ``(batches, loss_fn)``.

    A classifier on labelled lines: the labelled batches and cross-entropy (``None``, the
    default loss). Otherwise distillation to the unpruned ``model``: KL divergence of the
    logits (next-token distributions of a language model, or class distributions) or, for a
    base model, the mean squared error of its last hidden state.
    """
    if _uses_labels(model, data):
        return loader, None
    kind = "mse" if _kind(model) == "encoder" else "kl"
    return distill(model, loader, kind=kind, labelled=data.labelled)


def evaluate_text(
    model: nn.Module, data: TextData, *, teacher: nn.Module, batch_size: int = 64
) -> dict[str, float]:
    """Scores of ``model`` on the test split of ``data``, in eval mode.

    Returns:
        ``distill``: the distillation loss to ``teacher`` (as :func:`text_objective`
        defines it; 0 for the teacher itself), and where they apply ``acc`` and ``loss``:
        next-token top-1 accuracy and cross-entropy of a language model, or a classifier's
        accuracy and cross-entropy on the labels.
    """
    kind = _kind(model)
    distill_loss = DistillLoss("mse" if kind == "encoder" else "kl")
    device = model_device(model)
    totals = torch.zeros(4, dtype=torch.float64)  # distill sum, correct, CE sum, count
    samples = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in make_loader(data.test, batch_size=batch_size, shuffle=False):
                inputs, labels = batch if data.labelled else (batch, None)
                inputs = move(inputs, device)
                out = run_model(model, inputs)
                reference = run_model(teacher, move(inputs, model_device(teacher)))
                size = len(out)
                totals[0] += float(distill_loss(out, reference.to(device))) * size
                samples += size
                if kind == "lm":
                    ids = inputs["input_ids"]
                    logits, targets = out[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
                elif kind == "classifier" and labels is not None:
                    logits, targets = out, labels.to(device)
                else:
                    continue
                totals[1] += float((logits.argmax(-1) == targets).sum())
                totals[2] += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                totals[3] += len(targets)
    finally:
        model.train(was_training)
    if samples == 0:
        raise DataError(f"the test split of {data.name!r} is empty; add text to the file.")
    scores = {"distill": float(totals[0]) / samples}
    if totals[3]:
        scores |= {"acc": float(totals[1] / totals[3]), "loss": float(totals[2] / totals[3])}
    return scores
