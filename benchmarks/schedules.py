"""Exact against fast selection: loss and accuracy right after pruning, and seconds.

For every case and seed a model is trained (plain cross-entropy, SGD, the seed sets the
initialisation and data order), then pruned to each MACs budget by the exact schedule and by
each fast one (``Fast()``, or the ``--variants``), everything else at its default (50
candidates, rescale) but the widths, from the ``uniform`` allocator so that only the
schedule differs, on the same shuffled training mini-batches. The held-out
test split (the same for every seed) measures cross-entropy and accuracy with no
fine-tuning. The criterion for making ``fast`` the default (the scale issue): its loss within
5% (relative) of exact's and its accuracy within 0.5 points, mean over the seeds, at every
budget and case.

Cases (all data generated or bundled, no download):

- ``digits``: ``digits_cnn`` x4 wide (64/128 channels) on scikit-learn's digits;
- ``synthetic``: ``digits_cnn`` x4 on ``synthetic:2000`` (3x16x16);
- ``resnet``: ``resnet20`` x0.5 on ``synthetic:2000`` (3x16x16), a residual network.

    .venv/bin/python benchmarks/schedules.py               # 3 seeds, 50% and 25% MACs
    .venv/bin/python benchmarks/schedules.py --json
    .venv/bin/python benchmarks/schedules.py --variants '{"fast": {}, "rescore4": {"rescore": 4}}'
    .venv/bin/python benchmarks/schedules.py --reseeded   # exact against itself, another seed
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import torch
from trained import train_zoo

import gfsprune
from gfsprune import Macs, PruneConfig, prune
from gfsprune.core.schedules import Exact, Fast
from gfsprune.workflow.data import load_data, make_loader
from gfsprune.workflow.train import evaluate

# name: (data spec, zoo model, its options, training epochs, learning rate)
CASES = {
    "digits": ("digits", "digits_cnn", {"width_mult": 4.0}, 20, 0.01),
    "synthetic": ("synthetic:2000", "digits_cnn", {"width_mult": 4.0}, 10, 0.01),
    "resnet": ("synthetic:2000", "resnet20", {"width_mult": 0.5}, 10, 0.05),
}
#: Fast schedules by name: their options (``Fast(**options)``); ``--variants`` replaces them.
VARIANTS = {"fast": {}}


#: The exact schedule with another pruning seed (other random candidates, the same model and
#: batches): how far exact selection lies from itself, the floor of any comparison with it.
RESEEDED = "exact, pruning seed + 1000"


def run(
    case: str, seed: int, budgets: list[float], batch: int, variants: dict, reseeded: bool
) -> dict:
    """``{budget: {schedule: measures}}`` for one case and seed."""
    bundle = load_data(CASES[case][0])
    _, name, options, epochs, lr = CASES[case]
    model = train_zoo(name, bundle, seed=seed, epochs=epochs, lr=lr, **options)
    example = torch.zeros(1, *bundle.input_shape)
    acc, loss = evaluate(model, bundle.test)
    out = {"full": {"acc": acc, "loss": loss}}
    for budget in budgets:
        out[str(budget)] = {}
        for schedule in ("exact", *([RESEEDED] if reseeded else []), *variants):
            loader = make_loader(bundle.train, batch_size=batch, shuffle=True, seed=seed)
            start = time.perf_counter()
            result = prune(
                model,
                loader,
                example,
                target=Macs(budget),
                config=PruneConfig(
                    objective="loss",
                    schedule=Fast(**variants[schedule]) if schedule in variants else Exact(),
                    allocator="uniform",
                    seed=seed + 1000 * (schedule == RESEEDED),
                ),
                progress=False,
            )
            seconds = time.perf_counter() - start
            acc, loss = evaluate(result.model, bundle.test)
            print(
                f"{case} seed {seed} {budget} {schedule}: loss {loss:.4f} acc {acc:.4f} "
                f"{seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            out[str(budget)][schedule] = {
                "acc": acc,
                "loss": loss,
                "macs": result.macs_ratio,
                "seconds": seconds,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batch", type=int, default=64, help="pruning mini-batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--reseeded",
        action="store_true",
        help="also run exact selection with another pruning seed (its distance from itself)",
    )
    parser.add_argument(
        "--variants",
        default=json.dumps(VARIANTS),
        help='fast schedules as JSON, name: Fast options, e.g. \'{"g10": {"growth": 0.1}}\'',
    )
    args = parser.parse_args()
    variants = json.loads(args.variants)
    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    runs = {
        case: [
            run(case, seed, args.budgets, args.batch, variants, args.reseeded)
            for seed in range(args.seeds)
        ]
        for case in cases
    }
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(record, indent=1))
        return
    print(f"{record['date']}, {record['machine']}, torch {record['torch']}")
    print("mean ± std over seeds; held-out test split; no fine-tuning")
    print(
        "| case | MACs | schedule | test loss | test acc (%) | seconds | loss / exact's "
        "| acc - exact's | within 5% and 0.5 points |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case, seeds in runs.items():
        for budget in map(str, args.budgets):
            names = ("exact", *([RESEEDED] if args.reseeded else []), *variants)
            rows = {s: [r[budget][s] for r in seeds] for s in names}
            for schedule in names:
                stats = {
                    k: (
                        statistics.mean(m[k] for m in rows[schedule]),
                        statistics.stdev(m[k] for m in rows[schedule]) if len(seeds) > 1 else 0.0,
                    )
                    for k in ("loss", "acc", "seconds")
                }
                ratio = statistics.mean(m["loss"] for m in rows[schedule]) / statistics.mean(
                    m["loss"] for m in rows["exact"]
                )
                gap = 100 * (stats["acc"][0] - statistics.mean(m["acc"] for m in rows["exact"]))
                print(
                    f"| {case} | {float(budget):.0%} | {schedule} "
                    f"| {stats['loss'][0]:.4f} ± {stats['loss'][1]:.4f} "
                    f"| {100 * stats['acc'][0]:.2f} ± {100 * stats['acc'][1]:.2f} "
                    f"| {stats['seconds'][0]:.1f} | {ratio:.3f} | {gap:+.2f} "
                    f"| {'yes' if ratio <= 1.05 and gap >= -0.5 else 'no'} |"
                )


if __name__ == "__main__":
    main()
