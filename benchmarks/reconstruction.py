"""The reconstruction objective against exact network-loss greedy selection and Torch-Pruning's
pipelines: held-out loss and accuracy right after pruning, and seconds (issue 29).

For every case and seed a model is trained (plain cross-entropy, SGD, the seed sets the
initialisation and data order), then pruned to each MACs budget by every method on the same
shuffled training mini-batches (``--batch``); the held-out test split (the same for every
seed) measures cross-entropy and accuracy with no fine-tuning. All gfsprune methods take
their widths from the ``uniform`` allocator (so that only the selection differs), except
``recon curves``, whose widths come from the ``curves`` allocator measured along the
reconstruction paths (``Curves(schedule=Exact())``: the network loss at ``points`` widths per
layer, no greedy pass of the network loss). Methods:

- ``exact``: the network loss, the exact schedule, 50 random candidates per step (the
  library's selection today); ``exact reseeded``: the same with the pruning seed + 1000
  (other candidates: how far exact lies from itself);
- ``exact+refit``: ``exact`` with ``PruneConfig(refit=True)``: the network loss's choice,
  the consumers refit after each layer's (how much of the gain is the refit alone);
- ``recon refit``: ``Reconstruction()``: every item scored per step, the consumers re-solved
  by least squares at every step (fully corrective), refit after the choice;
- ``recon best``: the best scalar factor in closed form, no refit; ``recon best+refit``:
  the same with the refit after the choice; ``recon mean-field``: the paper's ``n / k``, no
  refit;
- ``recon judge4``: ``Reconstruction(judge=4)``: the network loss picks among the
  reconstruction's 4 best candidates at every step (with the fully corrective scores);
- ``recon intercept`` / ``recon no-intercept``: ``Reconstruction(intercept=True / False)``:
  an intercept for the consumers without a bias before a BatchNorm (the default), or none;
  ``recon auto``: ``Reconstruction(ridge="auto")``; ``recon rows-8k`` / ``recon rows-1k``:
  ``Reconstruction(rows=8192 / 1024)``: at most that many calibration rows per consumer and
  batch, drawn (the default takes every row);
- ``tp best``: the best (lowest held-out loss) of Torch-Pruning's pipelines ``tp-l1``,
  ``tp-l2-global``, ``tp-taylor-global`` and ``tp-lamp-global``
  (:mod:`gfsprune.workflow.methods`; their own widths, the pruning ratio bisected to the
  MACs of ``exact``).

Cases (all data generated or bundled, no download): ``digits`` (``digits_cnn`` x4 on
scikit-learn's digits), ``synthetic`` (``digits_cnn`` x4 on ``synthetic:2000``, 3x16x16) and
``resnet`` (``resnet20`` x0.5 on ``synthetic:2000``), as ``benchmarks/schedules.py``.

    .venv/bin/python benchmarks/reconstruction.py --cases digits --seeds 3
    .venv/bin/python benchmarks/reconstruction.py --json > out.json
    .venv/bin/python benchmarks/reconstruction.py --report out.json
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

import torch
from schedules import CASES
from trained import train_zoo

import gfsprune
from gfsprune import Macs, PruneConfig, prune
from gfsprune.core.allocate import Curves
from gfsprune.core.schedules import Exact
from gfsprune.scoring import Reconstruction
from gfsprune.workflow.data import load_data, make_loader
from gfsprune.workflow.methods import METHODS, MethodContext
from gfsprune.workflow.train import evaluate

#: gfsprune's methods: (objective, options of PruneConfig besides the seed).
RECON = {"candidates": None, "allocator": "uniform"}
GFS = {
    "exact": ("loss", {"allocator": "uniform"}),
    "exact reseeded": ("loss", {"allocator": "uniform"}),
    "exact+refit": ("loss", {"allocator": "uniform", "refit": True}),
    "recon refit": (Reconstruction(), RECON),
    "recon best": (Reconstruction(scale="best", refit=False), RECON),
    "recon best+refit": (Reconstruction(scale="best"), RECON),
    "recon mean-field": (Reconstruction(scale="mean-field", refit=False), RECON),
    "recon judge4": (Reconstruction(judge=4), RECON),
    "recon intercept": (Reconstruction(intercept=True), RECON),
    "recon no-intercept": (Reconstruction(intercept=False), RECON),
    "recon auto": (Reconstruction(ridge="auto"), RECON),
    "recon rows-8k": (Reconstruction(rows=8192), RECON),
    "recon rows-1k": (Reconstruction(rows=1024), RECON),
    "recon curves": (
        Reconstruction(),
        {"candidates": None, "allocator": Curves(schedule=Exact())},
    ),
}
TP = ("tp-l1", "tp-l2-global", "tp-taylor-global", "tp-lamp-global")


def run(case: str, seed: int, budgets: list[float], batch: int, methods: list[str]) -> dict:
    """``{budget: {method: measures}}`` (and ``"full"``) for one case and seed."""
    data, name, options, epochs, lr = CASES[case]
    bundle = load_data(data)
    model = train_zoo(name, bundle, seed=seed, epochs=epochs, lr=lr, **options)
    example = torch.zeros(1, *bundle.input_shape)
    acc, loss = evaluate(model, bundle.test)
    out: dict = {"full": {"acc": acc, "loss": loss}}

    def loader():
        return make_loader(bundle.train, batch_size=batch, shuffle=True, seed=seed)

    for budget in budgets:
        row = out[str(budget)] = {}
        results = {}
        for method in [m for m in methods if m in GFS]:
            objective, extra = GFS[method]
            config = PruneConfig(
                objective=objective, seed=seed + 1000 * (method == "exact reseeded"), **extra
            )
            start = time.perf_counter()
            result = prune(
                model, loader(), example, target=Macs(budget), config=config, progress=False
            )
            seconds = time.perf_counter() - start
            results[method] = result
            acc, loss = evaluate(result.model, bundle.test)
            row[method] = {"acc": acc, "loss": loss, "macs": result.macs_ratio, "seconds": seconds}
            _log(case, seed, budget, method, row[method])
        if "tp best" in methods and "exact" in results:
            context = MethodContext(
                model,
                results["exact"],
                loader,
                example,
                PruneConfig(),
                seed,
                torch.device("cpu"),
                False,
            )
            best = None
            for method in TP:
                start = time.perf_counter()
                pruned = METHODS[method].build(context)
                seconds = time.perf_counter() - start
                acc, loss = evaluate(pruned, bundle.test)
                macs = gfsprune.count(pruned, example)[0] / gfsprune.count(model, example)[0]
                measures = {
                    "acc": acc,
                    "loss": loss,
                    "macs": macs,
                    "seconds": seconds,
                    "tp": method,
                }
                _log(case, seed, budget, method, measures)
                if best is None or loss < best["loss"]:
                    best = measures
            row["tp best"] = best
    return out


def _log(case: str, seed: int, budget: float, method: str, m: dict) -> None:
    print(
        f"{case} seed {seed} {budget} {method}: loss {m['loss']:.4f} acc {m['acc']:.4f} "
        f"macs {m['macs']:.3f} {m['seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def report(record: dict) -> None:
    """The table of a run: mean ± std over the seeds; loss and accuracy against exact's."""
    print(f"{record['date']}, {record['machine']}, load {record['load']}, torch {record['torch']}")
    print("mean ± std over seeds; held-out test split; no fine-tuning; seconds indicative only")
    print("| case | MACs | method | test loss | test acc (%) | seconds | loss / exact's |")
    print("|---|---|---|---|---|---|---|")
    for case, seeds in record["runs"].items():
        full = [r["full"] for r in seeds]
        print(
            f"| {case} | 100% | unpruned | {statistics.mean(m['loss'] for m in full):.4f} "
            f"| {100 * statistics.mean(m['acc'] for m in full):.2f} | | |"
        )
        for budget in (b for b in seeds[0] if b != "full"):
            exact = None
            if "exact" in seeds[0][budget]:
                exact = statistics.mean(r[budget]["exact"]["loss"] for r in seeds)
            for method in seeds[0][budget]:
                rows = [r[budget][method] for r in seeds]

                def stat(key: str, rows=rows) -> tuple[float, float]:
                    values = [m[key] for m in rows]
                    spread = statistics.stdev(values) if len(values) > 1 else 0.0
                    return statistics.mean(values), spread

                (loss, dl), (acc, da), (sec, _) = stat("loss"), stat("acc"), stat("seconds")
                tps = sorted({m["tp"] for m in rows if "tp" in m})
                label = f"{method} ({', '.join(tps)})" if tps else method
                print(
                    f"| {case} | {float(budget):.0%} | {label} | {loss:.4f} ± {dl:.4f} "
                    f"| {100 * acc:.2f} ± {100 * da:.2f} | {sec:.1f} | "
                    f"{'-' if exact is None else f'{loss / exact:.3f}'} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batch", type=int, default=64, help="pruning mini-batch size")
    parser.add_argument("--methods", default=",".join([*GFS, "tp best"]), help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--report", help="print the table of a JSON record (several: merged)")
    args = parser.parse_args()
    if args.report:
        records = [json.load(open(path)) for path in args.report.split(",")]
        merged = records[0]
        for other in records[1:]:
            for case, seeds in other["runs"].items():
                merged["runs"].setdefault(case, []).extend(seeds)
        report(merged)
        return
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs = {
        case: [run(case, seed, args.budgets, args.batch, methods) for seed in seeds]
        for case in args.cases.split(",")
    }
    record = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads",
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(record, indent=1))
        return
    report(record)


if __name__ == "__main__":
    main()
