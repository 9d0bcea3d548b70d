"""Transformers right after pruning (issue 13): gfsprune's greedy selection of attention heads
and MLP neurons against magnitude pruning at the same MACs, label-free, on small causal
language models trained here on a synthetic sequence task.

The task: sequences over ``--vocab`` tokens from a second-order Markov chain, each next token
fixed by the two before it through a random table (seeded once, the same for every model)
with probability 0.9, else uniform; so next-token accuracy is at most about 0.9, and a model
must attend to earlier positions. For every seed and family, a model with more heads and
neurons than the task needs (so that there is redundancy to find) is trained on freshly drawn
sequences (AdamW, cross-entropy), then pruned to 50% and 25% of its MLP and attention MACs
(the attention products included, at the training sequence length; embeddings, norms and
the output layer are not prunable and not counted in that share):

- ``gfs``: ``gfsprune.prune`` with a ``Macs`` target that keeps the given share of the
  prunable MACs, label-free: distillation to the unpruned model (``distill(kind="kl")``, KL
  divergence of the next-token distributions) on mini-batches of freshly drawn sequences
  (64 batches of ``--batch``, cycled); the paper's rule (``objective="loss"``,
  ``curves`` widths, the exact schedule, the mean-field rescale) except ``candidates``
  (``--candidates`` per greedy step);
- ``gfs fast``: the same with ``schedule="fast"`` (a first-order screen picks the candidates
  and several neurons are added per step) and ``rescale=False``;
- ``gfs default``: ``PruneConfig()`` as shipped (the reconstruction objective, every
  candidate scored in closed form, ``uniform`` widths), the same distillation data;
- ``magnitude``: the first greedy row's per-layer widths (so the same MACs; ``--methods``
  chooses the greedy rows and their order), each layer keeping its items
  (heads, or key/value groups under grouped-query attention, or MLP neurons) of largest L2
  norm: the sum of squares of every weight the item's removal takes out (its rows of the
  input projections, its columns of the output projection; biases left out), which is the
  ranking Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` gives a group, applied to our
  items; no rescale, and removed through the same surgery (``prune_channels``).

Families: ``llama`` (``LlamaForCausalLM``: grouped-query attention, 8 query heads in 4
key/value groups, gated MLP) and ``gpt2`` (``GPT2LMHeadModel``: 8 heads, plain MLP), both 4
layers of width 64. Measured on ``--eval`` held-out sequences: the distillation loss (the KL
divergence the selection minimises, from the unpruned model's next-token distribution) and
next-token accuracy, right after pruning (no fine-tuning), and the seconds each method takes
to produce its pruned model. The seed changes the model's initialisation, its training
sequences, the pruning batches and gfsprune's candidate sampling; the evaluation sequences
and the Markov table are the same for every seed.

    .venv/bin/python benchmarks/transformers.py              # 3 seeds, both families
    .venv/bin/python benchmarks/transformers.py --quick      # a smoke run (seconds)
    .venv/bin/python benchmarks/transformers.py --json out.json
    .venv/bin/python benchmarks/transformers.py --methods "gfs default"   # one greedy row
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and its name would shadow the
# transformers package it benchmarks: the folder goes before transformers is imported.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

import gfsprune  # noqa: E402
from gfsprune import Macs, PruneConfig, prune  # noqa: E402
from gfsprune.core.losses import DistillLoss, distill  # noqa: E402
from gfsprune.models.hf import prepare  # noqa: E402
from gfsprune.surgery import ChannelLayer, find_layers, prune_channels  # noqa: E402

sys.path.append(str(Path(__file__).resolve().parent))  # after transformers, as above
from budgets import prunable_share  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: configs only

BUDGETS = (0.5, 0.25)
_TABLE_SEED = 1234  # the Markov chain's table, the same task for every seed
_EVAL_SEED = 999  # the held-out sequences


class Task:
    """A second-order Markov chain over ``vocab`` tokens: the next token is
    ``table[previous two]`` with probability ``1 - noise``, else uniform."""

    def __init__(self, vocab: int, noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(_TABLE_SEED)
        self.vocab, self.noise = vocab, noise
        self.table = torch.randint(0, vocab, (vocab, vocab), generator=g)

    def sample(self, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` sequences of ``length`` tokens, ``(count, length)``."""
        seqs = torch.randint(0, self.vocab, (count, length), generator=generator)
        for t in range(2, length):
            follow = self.table[seqs[:, t - 2], seqs[:, t - 1]]
            keep = torch.rand(count, generator=generator) >= self.noise
            seqs[:, t] = torch.where(keep, follow, seqs[:, t])
        return seqs


def build(family: str, vocab: int, length: int, seed: int) -> nn.Module:
    """A freshly initialised ``family`` model (4 layers, width 64, 8 heads), prepared."""
    sizes = dict(vocab_size=vocab, attn_implementation="eager")
    if family == "llama":
        config = transformers.LlamaConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            intermediate_size=256,
            max_position_embeddings=length,
            **sizes,
        )
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(
            n_embd=64,
            n_layer=4,
            n_head=8,
            n_inner=256,
            n_positions=length,
            bos_token_id=0,
            eos_token_id=0,
            **sizes,
        )
        cls = transformers.GPT2LMHeadModel
    torch.manual_seed(seed)
    return prepare(cls(config))


def train(model: nn.Module, task: Task, *, steps: int, length: int, seed: int) -> float:
    """Next-token cross-entropy training on fresh sequences; returns the seconds taken."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        ids = task.sample(32, length, g)
        logits = model(input_ids=ids)
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def scores(model: nn.Module, teacher: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Distillation loss (KL from the teacher's next-token distributions) and next-token
    accuracy from position 2 on (where the table decides), on held-out ``ids``."""
    logits, reference = model(input_ids=ids), teacher(input_ids=ids)
    kl = float(DistillLoss("kl")(logits, reference))
    right = logits[:, 1:-1].argmax(-1) == ids[:, 2:]
    return {"distill": kl, "acc": float(right.float().mean())}


def magnitude_channels(model: nn.Module, example: dict, widths: dict[str, int]) -> dict:
    """Per layer, the channels of its ``widths[name]`` items of largest L2 norm over all
    the weights each item's removal takes out (producers' rows, consumers' columns)."""
    layers, _ = find_layers(model, example)
    modules = dict(model.named_modules())
    kept = {}
    for layer in layers:
        per_channel = _squares(layer, modules)
        per_item = per_channel[layer.item_index].sum(1)
        top = torch.topk(per_item, widths[layer.name] // layer.item_size).indices
        kept[layer.name] = sorted(layer.channels(top.tolist()))
    return kept


def _squares(layer: ChannelLayer, modules: dict[str, nn.Module]) -> torch.Tensor:
    """Sum of squared weights of every layer channel, ``(width,)``."""
    total = torch.zeros(layer.width)
    for p in layer.producers:
        module = modules[p.name]
        if isinstance(module, nn.Linear):  # the attention module itself holds no weights
            rows = module.weight.detach().pow(2).sum(1)
            total.index_add_(0, torch.as_tensor(p.root), rows)
    for c in layer.consumers:
        columns = modules[c.name].weight.detach().pow(2).sum(0)
        total.index_add_(0, c.root, columns[c.index])
    return total


#: The gfsprune settings compared (both with ``candidates`` from the command line).
GREEDY = {
    # the paper's rule: the network loss, curves widths, exact schedule, mean-field rescale
    "gfs": {"objective": "loss", "allocator": "curves"},
    "gfs fast": {"objective": "loss", "allocator": "curves", "schedule": "fast", "rescale": False},
    "gfs default": {},  # PruneConfig() as shipped
}


def run_one(family: str, seed: int, args: argparse.Namespace, task: Task, held_out) -> list:
    greedy = _greedy(args)
    model = build(family, args.vocab, args.length, seed)
    trained_s = train(model, task, steps=args.steps, length=args.length, seed=seed)
    base = scores(model, model, held_out)
    g = torch.Generator().manual_seed(seed + 10_000)
    batches = [{"input_ids": task.sample(args.batch, args.length, g)} for _ in range(64)]
    example = {"input_ids": batches[0]["input_ids"][:1]}
    rows = []
    for share in BUDGETS:
        ratio = prunable_share(model, example, share)
        row = {"family": family, "seed": seed, "share": share, "base": base, "train_s": trained_s}
        for name in greedy:
            options = GREEDY[name]
            data, loss_fn = distill(model, batches, kind="kl")
            config = PruneConfig(candidates=args.candidates or None, seed=seed, **options)
            start = time.perf_counter()
            result = prune(
                model,
                data,
                example,
                target=Macs(ratio),
                config=config,
                loss_fn=loss_fn,
                progress=False,
            )
            seconds = time.perf_counter() - start
            row[name] = {**scores(result.model, model, held_out), "seconds": seconds}
            row[name]["macs_ratio"] = result.macs_ratio
            row[name]["widths"] = {p.name: len(p.kept) for p in result.plan}
        start = time.perf_counter()
        kept = magnitude_channels(model, example, row[greedy[0]]["widths"])
        magnitude = prune_channels(model, example, kept)
        seconds = time.perf_counter() - start
        macs = gfsprune.count(magnitude, example)[0] / gfsprune.count(model, example)[0]
        row["magnitude"] = {**scores(magnitude, model, held_out), "seconds": seconds}
        row["magnitude"]["macs_ratio"] = macs
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _greedy(args: argparse.Namespace) -> list[str]:
    """The greedy rows ``--methods`` names, in its order (default: every one)."""
    return [m.strip() for m in args.methods.split(",")] if args.methods else list(GREEDY)


def _methods(rows: list[dict]) -> list[str]:
    """The rows' methods, in their order (the greedy rows, then ``magnitude``)."""
    return [m for m in rows[0] if m in GREEDY or m == "magnitude"]


def _line(row: dict) -> str:
    methods = _methods([row])
    cells = [row["family"], str(row["seed"]), f"{row['share']:.0%}"]
    cells.append(f"{row[methods[0]]['macs_ratio']:.3f}")
    cells.append(f"{row['base']['acc']:.3f}")
    cells += [f"{row[m]['distill']:.4f}" for m in methods]
    cells += [f"{row[m]['acc']:.3f}" for m in methods]
    cells += [f"{row[m]['seconds']:.1f}" for m in methods]
    return "| " + " | ".join(cells) + " |"


def header(methods: list[str]) -> str:
    return (
        "| family | seed | MLP+attn MACs kept | model MACs ratio | acc unpruned | "
        + " | ".join(f"distill {m}" for m in methods)
        + " | "
        + " | ".join(f"acc {m}" for m in methods)
        + " | "
        + " | ".join(f"s {m}" for m in methods)
        + " |\n"
        + "| --- " * (5 + 3 * len(methods))
        + "|"
    )


def summary(rows: list[dict]) -> list[str]:
    """Per family and budget: mean scores, and on how many seeds each gfsprune setting had
    a lower distillation loss than magnitude pruning."""
    lines = []
    for family in sorted({r["family"] for r in rows}):
        for share in BUDGETS:
            mine = [r for r in rows if r["family"] == family and r["share"] == share]
            if not mine:
                continue
            parts = []
            for m in _methods(rows):
                distill_mean = statistics.mean(r[m]["distill"] for r in mine)
                acc = statistics.mean(r[m]["acc"] for r in mine)
                secs = statistics.mean(r[m]["seconds"] for r in mine)
                won = ""
                if m != "magnitude":
                    wins = sum(r[m]["distill"] < r["magnitude"]["distill"] for r in mine)
                    won = f", lower than magnitude on {wins}/{len(mine)} seeds"
                parts.append(f"{m}: distill {distill_mean:.4f}, acc {acc:.3f}, {secs:.1f} s{won}")
            lines.append(f"{family} at {share:.0%}: " + "; ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--families", default="llama,gpt2")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (batch 32)")
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--length", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=32, help="sequences per pruning batch")
    parser.add_argument("--eval", type=int, default=512, help="held-out sequences")
    parser.add_argument("--candidates", type=int, default=16, help="per greedy step; 0: all")
    parser.add_argument(
        "--methods", help=f"greedy rows, comma-separated, among {list(GREEDY)} (default all)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, tiny")
    parser.add_argument("--json", help="also write the rows and the context here")
    args = parser.parse_args()
    unknown = sorted(set(_greedy(args)) - set(GREEDY))
    if unknown or not _greedy(args):
        parser.error(f"--methods: unknown {unknown}; choose among {list(GREEDY)}")
    if args.quick:
        args.seeds, args.steps, args.eval, args.candidates, args.families = 1, 20, 64, 2, "gpt2"
        args.length, args.batch = 16, 8
    torch.set_num_threads(1)
    task = Task(args.vocab)
    held_out = task.sample(args.eval, args.length, torch.Generator().manual_seed(_EVAL_SEED))
    context = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_pruning": tp.__version__,
        "gfsprune": gfsprune.__version__,
        "args": vars(args),
    }
    print(json.dumps(context))
    print(header([*_greedy(args), "magnitude"]))
    rows = []
    for family in args.families.split(","):
        for seed in range(args.seeds):
            rows += run_one(family, seed, args, task, held_out)
    print()
    print("\n".join(summary(rows)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"context": context, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    main()
