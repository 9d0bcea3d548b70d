"""A small LLaMA-style language model trained here on the Brown corpus, saved as an ``hf:DIR``
folder (issue 30's text case; ``real.py --case brown`` prunes it).

The corpus is ``brown.txt`` of ``benchmarks/setup_real.sh``: 500 files, one per line, tags
stripped (1,161,192 tokens separated by spaces). Every tenth file (lines 10, 20, ..., 500) is
held out for perplexity; the other 450 train the tokenizer and the model.

- Tokenizer: word level (``tokenizers``' ``WordLevel``), lowercased, split on whitespace:
  the :data:`VOCAB` - 2 most frequent words of the training files, ``<unk>`` for the others and
  ``<|endoftext|>`` between files (saved as a ``PreTrainedTokenizerFast``, so ``text:FILE``
  reads the files through it);
- model: ``LlamaForCausalLM`` (:data:`CONFIG`: 4 layers of width 128, 8 heads of 16 without
  grouping, gated MLP of 512, tied embeddings), trained from scratch on blocks of
  :data:`LENGTH` tokens (``text:FILE``'s blocks: the files joined by ``<|endoftext|>``) with
  AdamW (lr 3e-3, weight decay 0.01, 5% linear warm-up, cosine to 0, batch 32, gradient norm
  clipped at 1);
- perplexity: ``exp`` of the mean next-token cross-entropy over every position but the
  first of each held-out block, ``<unk>`` counted as a word (so it is the perplexity of the
  closed vocabulary; :func:`train` records the held-out ``<unk>`` rate).

The folder (config, weights, tokenizer, the two text files and ``recipe.json``) is written
once; a later call with the same recipe loads it instead of training again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset

from gfsprune import models
from gfsprune.models.hf import prepare
from gfsprune.workflow.text import load_text

VOCAB = 4096
LENGTH = 64
HELD_OUT = 10  # every tenth file is held out
CONFIG = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 512,
    "max_position_embeddings": LENGTH,
    "vocab_size": VOCAB,
    "tie_word_embeddings": True,
}
BATCH, LR = 32, 3e-3
UNK, END = "<unk>", "<|endoftext|>"


def split_files(corpus: Path, folder: Path) -> None:
    """Write ``train.txt`` and ``test.txt`` (every :data:`HELD_OUT`-th file) to ``folder``."""
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    held = [line for i, line in enumerate(lines) if i % HELD_OUT == HELD_OUT - 1]
    kept = [line for i, line in enumerate(lines) if i % HELD_OUT != HELD_OUT - 1]
    (folder / "train.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (folder / "test.txt").write_text("\n".join(held) + "\n", encoding="utf-8")


def save_tokenizer(folder: Path) -> None:
    """Train the word-level tokenizer on ``folder/train.txt`` and save it in ``folder``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = WordLevelTrainer(vocab_size=VOCAB, special_tokens=[UNK, END])
    tokenizer.train([str(folder / "train.txt")], trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=UNK, eos_token=END
    ).save_pretrained(folder)


def blocks(folder: Path, name: str) -> torch.Tensor:
    """Every block of ``LENGTH`` tokens of ``folder/name`` (``text:FILE``'s, both of its
    splits), ``(N, LENGTH)``."""
    data = load_text(f"text:{folder / name}", model=f"hf:{folder}", length=LENGTH)
    return torch.stack([s["input_ids"] for s in ConcatDataset([data.train, data.test])])


def adamw(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
) -> None:
    """``steps`` AdamW steps (weight decay 0.01, 5% linear warm-up, cosine to 0, gradient
    norm clipped at 1) on ``loss(logits, ids)`` of the next batches of token ids."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    for _ in range(steps):
        ids = next(batches)
        value = loss(model(input_ids=ids), ids)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()


def shuffled(ids: torch.Tensor, batch: int, *, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of rows of ``ids``, reshuffled every pass with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(ids), generator=generator)
        for start in range(0, len(ids) - batch + 1, batch):
            yield ids[order[start : start + batch]]


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every next token in the blocks."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, *, batch: int = 64) -> float:
    """``exp`` of the mean next-token cross-entropy over the blocks ``ids``."""
    model.eval()
    total = sum(
        float(next_token_loss(model(input_ids=ids[i : i + batch]), ids[i : i + batch]))
        * len(ids[i : i + batch])
        for i in range(0, len(ids), batch)
    )
    return math.exp(total / len(ids))


def train(corpus: Path, folder: Path, *, steps: int, seed: int = 0) -> tuple[nn.Module, dict]:
    """The trained model of ``folder`` (prepared by gfsprune's ``hf:`` loader) and its
    recipe; trained and saved there first unless the folder holds this recipe already."""
    recipe = {"config": CONFIG, "steps": steps, "batch": BATCH, "lr": LR, "seed": seed}
    record = folder / "recipe.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if {key: saved.get(key) for key in recipe} == recipe:
            return models.get(f"hf:{folder}").eval(), saved
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    split_files(corpus, folder)
    save_tokenizer(folder)
    config = transformers.LlamaConfig(**CONFIG, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(seed)
    net = transformers.LlamaForCausalLM(config)
    net.save_pretrained(folder)  # the config, which reading the folder's blocks needs
    model = prepare(net)
    train_ids, test_ids = blocks(folder, "train.txt"), blocks(folder, "test.txt")
    start = time.process_time()
    adamw(model, shuffled(train_ids, BATCH, seed=seed), next_token_loss, steps=steps, lr=LR)
    seconds = time.process_time() - start
    net.save_pretrained(folder)
    model = models.get(f"hf:{folder}").eval()  # measured as loaded from the folder
    recipe |= {
        "train_tokens": train_ids.numel(),
        "test_tokens": test_ids.numel(),
        "epochs": steps * BATCH / len(train_ids),
        "test_unk": float((test_ids == 0).float().mean()),
        "test_perplexity": perplexity(model, test_ids),
        "train_cpu_seconds": seconds,
    }
    record.write_text(json.dumps(recipe, indent=1), encoding="utf-8")
    return model, recipe
