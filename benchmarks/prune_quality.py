"""Pruning quality right after pruning (no fine-tuning): gfsprune against random channels and
Torch-Pruning's L1 magnitude pruner at the same MACs, on a CNN trained on scikit-learn digits.

For every seed a ``digits_cnn`` (``--width-mult`` times its 16/32 channels; 4 by default, so
that 50 candidates per step are a real subsample of the 128-channel layer) is trained on the
digits training split (20 epochs, batch 64, lr 0.01: at lr 0.05 most channels of its second
conv end up dead, see docs/RESULTS.md); the held-out test split (the same for every seed)
measures accuracy and cross-entropy of each pruned model, with no fine-tuning. The pruning data
are shuffled training mini-batches (``--batch``). At each MACs budget the methods are:

- ``gfsprune``: ``prune(target=Macs(r))`` with the default mean-field rescale (kept x D/n);
- ``gfsprune, no rescale``: the same with ``rescale=False``;
- ``random``: uniformly random channels at the per-layer widths gfsprune chose, rescaled by
  D/n like gfsprune's default;
- ``random, no rescale``: the same channels without the rescale;
- ``tp l1``: Torch-Pruning's ``MetaPruner`` with ``GroupMagnitudeImportance(p=1)`` (the
  classifier ignored), its uniform pruning ratio bisected until ``gfsprune.count`` measures
  the MACs ratio within 1% (relative) of the budget, or as close as its channel steps allow.

The seed changes the trained model (initialisation and data order), the pruning mini-batch
order, gfsprune's candidate sampling and the random channels. ``seconds`` is the time to
produce the pruned model at a known setting (for Torch-Pruning: one pruning at the bisected
ratio; the bisection itself is reported separately in the JSON).

    .venv/bin/python benchmarks/prune_quality.py                # 3 seeds, the table
    .venv/bin/python benchmarks/prune_quality.py --json         # the dict behind the table
    .venv/bin/python benchmarks/prune_quality.py --candidates 0 # score every channel per step
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn
from trained import train_zoo

import gfsprune
from gfsprune import LayerPlan, Macs, PruneConfig, count, prune
from gfsprune.surgery import prune_channels
from gfsprune.workflow.data import DataBundle, load_data, make_loader
from gfsprune.workflow.methods import match_macs
from gfsprune.workflow.train import evaluate


def random_channels(
    model: nn.Module, example: torch.Tensor, plan: list[LayerPlan], *, seed: int, rescale: bool
) -> nn.Module:
    """Uniformly random channels at the widths of ``plan`` (a gfsprune plan)."""
    generator = torch.Generator().manual_seed(seed)
    kept = {p.name: torch.randperm(p.width, generator=generator)[: len(p.kept)] for p in plan}
    scales = {p.name: p.width / len(p.kept) if rescale else 1.0 for p in plan}
    return prune_channels(model, example, {n: k.tolist() for n, k in kept.items()}, scales=scales)


def tp_l1(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    """Torch-Pruning's local L1 (group magnitude) pruning at a uniform channel ratio."""
    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[pruned.fc],
    )
    pruner.step()
    return pruned


def measure(pruned: nn.Module, seconds: float, bundle: DataBundle, macs: int, **extra) -> dict:
    """Test accuracy and loss of ``pruned``, its MACs as a fraction of ``macs``, and extras."""
    acc, loss = evaluate(pruned, bundle.test)
    achieved = count(pruned, torch.zeros(1, *bundle.input_shape))[0] / macs
    return {"acc": acc, "loss": loss, "macs": achieved, "seconds": seconds, **extra}


def run_budget(
    model: nn.Module, bundle: DataBundle, args: argparse.Namespace, *, seed: int, budget: float
) -> dict:
    """Every method at one MACs budget: ``{method: measures}``."""
    example = torch.zeros(1, *bundle.input_shape)
    macs = count(model, example)[0]
    row = {}
    plans = {}
    for method, rescale in (("gfsprune", True), ("gfsprune, no rescale", False)):
        start = time.perf_counter()
        result = prune(
            model,
            make_loader(bundle.train, batch_size=args.batch, shuffle=True, seed=seed),
            example,
            target=Macs(budget),
            progress=False,
            config=PruneConfig(
                objective="loss",
                allocator="curves",
                candidates=args.candidates or None,
                rescale=rescale,
                seed=seed,
            ),
        )
        seconds = time.perf_counter() - start
        widths = {p.name: len(p.kept) for p in result.plan}
        row[method] = measure(result.model, seconds, bundle, macs, widths=widths)
        plans[rescale] = result.plan
    for method, rescale in (("random", True), ("random, no rescale", False)):
        start = time.perf_counter()
        pruned = random_channels(model, example, plans[True], seed=seed, rescale=rescale)
        row[method] = measure(pruned, time.perf_counter() - start, bundle, macs)
    start = time.perf_counter()
    matched = match_macs(lambda r: tp_l1(model, example, r), example, macs=macs, target=budget)
    ratio, steps = matched.ratio, matched.steps
    bisect_s = time.perf_counter() - start
    start = time.perf_counter()
    pruned = tp_l1(model, example, ratio)
    row["tp l1"] = measure(
        pruned,
        time.perf_counter() - start,
        bundle,
        macs,
        pruning_ratio=ratio,
        bisection_steps=steps,
        bisect_s=bisect_s,
    )
    return row


def run_seed(bundle: DataBundle, args: argparse.Namespace, seed: int) -> dict:
    """Every method at every budget for one seed: ``{budget: {method: measures}}``."""
    model = train_zoo(
        "digits_cnn", bundle, seed=seed, epochs=args.epochs, lr=args.lr, width_mult=args.width_mult
    )
    acc, loss = evaluate(model, bundle.test)
    full = {"acc": acc, "loss": loss, "macs": 1.0, "seconds": 0.0}
    return {
        str(budget): {
            "full model": full,
            **run_budget(model, bundle, args, seed=seed, budget=budget),
        }
        for budget in args.budgets
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation over seeds of every measure."""
    summary = {}
    for budget, row in runs[0].items():
        summary[budget] = {}
        for method in row:
            summary[budget][method] = {}
            for key in ("acc", "loss", "macs", "seconds"):
                values = [run[budget][method][key] for run in runs]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[budget][method][key] = (statistics.mean(values), std)
    return summary


def print_table(summary: dict, seeds: int) -> None:
    print(f"mean ± std over {seeds} seeds; held-out test split; no fine-tuning")
    print("| MACs budget | method | test acc (%) | test loss | MACs ratio | seconds |")
    print("|---|---|---|---|---|---|")
    for budget, row in summary.items():
        for method, m in row.items():
            acc, loss, macs, seconds = (m[k] for k in ("acc", "loss", "macs", "seconds"))
            print(
                f"| {float(budget):.0%} | {method} | {100 * acc[0]:.1f} ± {100 * acc[1]:.1f} "
                f"| {loss[0]:.3f} ± {loss[1]:.3f} | {macs[0]:.3f} ± {macs[1]:.3f} "
                f"| {seconds[0]:.2f} ± {seconds[1]:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--width-mult", type=float, default=4.0, help="digits_cnn width")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01, help="training learning rate")
    parser.add_argument("--batch", type=int, default=64, help="pruning mini-batch size")
    parser.add_argument(
        "--candidates", type=int, default=50, help="channels scored per step (0: all)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_data("digits")
    start = time.perf_counter()
    runs = [run_seed(bundle, args, seed) for seed in range(args.seeds)]
    summary = summarize(runs)
    machine = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "gfsprune": gfsprune.__version__,
    }
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    total_s = round(time.perf_counter() - start, 1)
    if args.json:
        out = {"settings": settings, "machine": machine, "summary": summary, "runs": runs}
        print(json.dumps({**out, "total_s": total_s}, indent=1))
        return
    print(f"# {machine}")
    print(f"# {settings}")
    print_table(summary, args.seeds)
    print(f"# total {total_s} s")


if __name__ == "__main__":
    main()
