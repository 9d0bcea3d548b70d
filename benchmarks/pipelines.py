"""gfsprune's default pipeline against Torch-Pruning's own pipelines, right after pruning and
after fine-tuning (issue 12).

For every case and seed a model is trained (plain cross-entropy, SGD; the seed sets the
initialisation and data order), then ``gfsprune.workflow.compare`` prunes it to each MACs
budget by every method and fine-tunes each pruned model for every budget of ``--epochs``
(each budget its own run, the same recipe for every method). ``gfs`` is the default
pipeline: ``gfsprune.prune(model, batches, x, target=Macs(r))`` with every option at its
default (or ``--gfs`` options; ``'{"objective": "loss", "allocator": "curves"}'`` is the
paper's rule, gfsprune's default until 0.1.0); Torch-Pruning's pipelines choose their own
widths, their pruning ratio bisected to gfs's MACs. Test accuracy (held-out split, the same
for every seed) is reported as mean ± standard deviation over the seeds.

Cases (all data generated or bundled, no download):

- ``digits``: ``digits_cnn`` x4 wide (64/128 channels, so that 50 candidates per step are a
  real subsample) on scikit-learn's digits;
- ``synthetic``: ``resnet20`` x0.5 on ``synthetic:2000`` (3x16x16);
- ``cifar``: ``resnet20`` on ``synthetic:2000`` upsampled to 3x32x32, CIFAR-10's shape.

    .venv/bin/python benchmarks/pipelines.py --cases digits --seeds 3 --json out.json
    .venv/bin/python benchmarks/pipelines.py --report out.json     # the tables of a run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from trained import train_zoo

import gfsprune
from gfsprune import PruneConfig
from gfsprune.workflow.compare import CompareConfig, compare
from gfsprune.workflow.data import DataBundle, load_data
from gfsprune.workflow.train import TrainConfig

# name: (data spec, upsample to, zoo model, its options, training epochs, learning rate)
CASES = {
    "digits": ("digits", None, "digits_cnn", {"width_mult": 4.0}, 20, 0.01),
    "synthetic": ("synthetic:2000", None, "resnet20", {"width_mult": 0.5}, 10, 0.05),
    "cifar": ("synthetic:2000", 32, "resnet20", {}, 10, 0.05),
}
METHODS = ("gfs", "tp-l1", "tp-l2-global", "tp-taylor-global", "tp-lamp-global", "bn")


def _upsampled(bundle: DataBundle, side: int) -> DataBundle:
    """``bundle`` with every image resized to ``side`` x ``side`` (bilinear)."""

    def resize(split):
        images = torch.stack([split[i][0] for i in range(len(split))])
        labels = torch.tensor([int(split[i][1]) for i in range(len(split))])
        big = F.interpolate(images, size=side, mode="bilinear", align_corners=False)
        return torch.utils.data.TensorDataset(big, labels)

    c = bundle.input_shape[0]
    return dataclasses.replace(
        bundle, train=resize(bundle.train), test=resize(bundle.test), input_shape=(c, side, side)
    )


def _data(case: str) -> DataBundle:
    spec, side = CASES[case][:2]
    bundle = load_data(spec)
    return bundle if side is None else _upsampled(bundle, side)


def run(case: str, seed: int, args: argparse.Namespace) -> dict:
    """``{"base": ..., budget: {method: row}}`` for one case and seed."""
    bundle = _data(case)
    _, _, name, options, epochs, lr = CASES[case]
    model = train_zoo(name, bundle, seed=seed, epochs=epochs, lr=lr, **options)
    out: dict = {}
    for budget in args.budgets:
        config = CompareConfig(
            macs=budget,
            finetune=TrainConfig(epochs=max(args.epochs), batch_size=64, lr=args.lr, seed=seed),
            epochs=tuple(args.epochs),
            methods=tuple(args.methods.split(",")),
            prune=PruneConfig(**json.loads(args.gfs)),
            batch_size=64,
            seed=seed,
        )
        comparison = compare(model, bundle, config, progress=False)
        out["base"] = comparison.results["base"]
        out[str(budget)] = comparison.results["methods"]
        print(f"{case} seed {seed} {budget}: done", file=sys.stderr, flush=True)
    return out


def report(record: dict) -> None:
    """The tables: per case and budget, accuracy after each fine-tuning budget."""
    print(f"{record['date']}, {record['machine']}, torch {record['torch']}, gfs {record['gfs']}")
    for case, seeds in record["runs"].items():
        budgets = [k for k in seeds[0] if k != "base"]
        base = statistics.mean(s["base"]["acc"] for s in seeds)
        epochs = sorted(seeds[0][budgets[0]]["gfs"]["epochs"], key=int)
        print(
            f"\n{case} (base {100 * base:.1f}%), test accuracy %, mean ± std over "
            f"{len(seeds)} seeds"
        )
        print(
            "| MACs | method | MACs ratio | " + " | ".join(f"after {e} ep." for e in epochs) + " |"
        )
        print("|---|---|---|" + "---|" * len(epochs))
        for budget in budgets:
            for method in seeds[0][budget]:
                rows = [s[budget][method] for s in seeds]
                macs = statistics.mean(
                    r["macs"] / s["base"]["macs"] for r, s in zip(rows, seeds, strict=True)
                )
                cells = []
                for e in epochs:
                    if any(e not in r["epochs"] for r in rows):
                        cells.append("-")  # e.g. scratch: trained for the largest budget only
                        continue
                    accs = [100 * r["epochs"][e]["acc"] for r in rows]
                    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
                    cells.append(f"{statistics.mean(accs):.1f} ± {spread:.1f}")
                print(
                    f"| {float(budget):.0%} | {method} | {macs:.3f} | " + " | ".join(cells) + " |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--gfs", default="{}", help="PruneConfig options of gfs, as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the record here (after each run)")
    parser.add_argument("--report", default=None, help="print the tables of a --json file")
    args = parser.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    torch.set_num_threads(args.threads)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "gfs": args.gfs,
        "runs": {},
    }
    for case in args.cases.split(","):
        record["runs"][case] = []
        for seed in range(args.seeds):
            record["runs"][case].append(run(case, seed, args))
            if args.json:
                Path(args.json).write_text(json.dumps(record, indent=1))
    report(record)


if __name__ == "__main__":
    main()
