"""Real pretrained networks and real data (issue 30): every method side by side at one MACs.

Needs the material of ``make bench-real-setup`` (``benchmarks/setup_real.sh``) in ``--bench``
(default ``.bench``). Two cases:

- ``effnet``: EfficientNet-Lite0 pretrained on ImageNet-1k (``efficientnet_lite.py``), pruned
  **label-free** (:func:`gfsprune.distill`: KL to the unpruned model's logits) on random
  crops of the calibration photos of ``images:.bench/photos``, to each ``--targets`` MACs
  ratio; measured by top-1 agreement and KL with the unpruned model on the held-out crops of
  the held-out photos, right after pruning and after the same distillation fine-tuning
  (``steps`` steps of SGD) for every method, with time to prune, params and CPU latency;
- ``fashion``: a resnet20 and a MobileNetV2 (``small_input``) trained here on Fashion-MNIST
  (``fashion-mnist:.bench/fashion-mnist``, the official 60k/10k split), then
  :func:`gfsprune.workflow.compare.compare` at each target with fine-tuning budgets and
  ``scratch`` (the pruned architecture re-initialised and trained for the pre-training plus
  the largest budget's epochs), over seeds; tables as ``pipelines.py`` prints them.

Methods: ``gfs`` (gfsprune: the default selection, or with ``--quick`` the fast schedule
with a small screen, named ``gfs-fast`` then) and Torch-Pruning's pipelines (``tp-l1``,
``tp-l2-global``, ``tp-taylor-global``, ``tp-lamp-global``; :mod:`gfsprune.workflow.methods`),
their pruning ratio bisected to gfs's MACs within 1%. ``--quick`` shrinks everything (input
size, calibration and test samples, training subsets, epochs, seeds) so that a case runs in
minutes on one CPU core; the sizes are in the JSON record.

    .venv/bin/python benchmarks/real.py --case effnet --quick --json effnet.json
    .venv/bin/python benchmarks/real.py --case fashion --quick --json fashion.json

Timing columns (seconds, latency) are only meaningful on an otherwise idle machine; the
record holds the load average at the start and end of the run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import efficientnet_lite
import torch
from pipelines import report as fashion_report
from torch.utils.data import Subset
from trained import train_zoo

import gfsprune
from gfsprune import Macs, PruneConfig, distill, prune
from gfsprune.core.allocate import Curves
from gfsprune.core.counting import count
from gfsprune.core.schedules import Exact, Fast
from gfsprune.models import load_weights
from gfsprune.scoring import Reconstruction
from gfsprune.workflow.compare import CompareConfig, compare
from gfsprune.workflow.data import DataBundle, load_data, make_loader
from gfsprune.workflow.distillation import Distillation, agreement
from gfsprune.workflow.latency import latencies
from gfsprune.workflow.methods import METHODS, MethodContext
from gfsprune.workflow.train import TrainConfig, fit

TP = ("tp-l1", "tp-l2-global", "tp-taylor-global", "tp-lamp-global")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a run is (``--quick`` or the issue's full settings)."""

    image_size: int  # effnet input side (the pretrained model's own is 224)
    batch: int  # effnet calibration and fine-tuning batch
    test_crops: int  # effnet held-out crops measured (of 256)
    steps: int  # effnet distillation fine-tuning steps, the same for every method
    screen: int | None  # gfs-fast: candidates scored exactly per step (None: the default gfs)
    train_images: int  # fashion: training images used (of 60,000)
    test_images: int  # fashion: test images used (of 10,000)
    pretrain_epochs: int  # fashion: epochs of training before pruning
    epochs: tuple[int, ...]  # fashion: fine-tuning budgets
    seeds: int  # fashion
    mobilenet_width: float  # fashion: MobileNetV2 width multiplier


FULL = Sizes(224, 32, 256, 200, None, 60_000, 10_000, 30, (0, 1, 5), 3, 1.0)
QUICK = Sizes(96, 4, 64, 8, 4, 2_000, 1_000, 2, (0, 1), 1, 0.5)


#: gfsprune's variants (``--gfs``): the row's name and its options.
GFS = {
    "default": ("gfs", PruneConfig()),
    "recon": (
        "gfs-recon",
        PruneConfig(objective=Reconstruction(), candidates=None, allocator="uniform"),
    ),
    "recon-curves": (
        "gfs-recon-curves",
        PruneConfig(
            objective=Reconstruction(), candidates=None, allocator=Curves(schedule=Exact())
        ),
    ),
}


def _gfs(sizes: Sizes, variants: list[str]) -> list[tuple[str, PruneConfig]]:
    """The gfs rows' names and options: ``variants`` of :data:`GFS`; with ``--quick``'s
    sizes the default pipeline is replaced by a fast schedule (``gfs-fast``)."""
    rows = []
    for variant in variants:
        if variant == "default" and sizes.screen is not None:
            schedule = Fast(growth=1.0, screen=sizes.screen, warmup=1)
            rows.append(("gfs-fast", PruneConfig(schedule=schedule, allocator="uniform")))
        else:
            rows.append(GFS[variant])
    return rows


def effnet(
    bench: Path,
    sizes: Sizes,
    targets: list[float],
    methods: list[str],
    gfs: list[str],
    rows: list[dict],
) -> None:
    """Append the rows of the EfficientNet-Lite0 case to ``rows``: one per target and method,
    as each is measured (a run stopped early keeps what it measured)."""
    model = efficientnet_lite.lite0()
    load_weights(model, efficientnet_lite.weights_path())
    model.eval()
    side = sizes.image_size
    bundle = load_data(
        f"images:{bench / 'photos'}",
        image_size=side,
        mean=efficientnet_lite.MEAN,
        std=efficientnet_lite.STD,
    )
    test = Subset(bundle.test, range(min(sizes.test_crops, len(bundle.test))))
    tune = dataclasses.replace(
        bundle, train=Subset(bundle.train, range(sizes.steps * sizes.batch)), test=test
    )
    loader = make_loader(bundle.train, batch_size=sizes.batch, shuffle=True, seed=0)
    data, loss_fn = distill(model, loader)
    example = torch.zeros(1, 3, side, side)
    macs, params = count(model, example)
    variants = _gfs(sizes, gfs)
    for target in targets:
        results = {}
        for name, config in variants:
            start = time.perf_counter()
            torch.manual_seed(0)
            result = prune(
                model,
                data,
                example,
                target=Macs(target),
                config=config,
                loss_fn=loss_fn,
                progress=False,
            )
            seconds = time.perf_counter() - start
            results[name] = result
            print(f"effnet {target}: {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
            rows.append(
                {"target": target, "method": name, "seconds": seconds}
                | _effnet_scores(result.model, model, tune, sizes, base=(macs, params))
            )
            print(f"effnet {target}: {name} {rows[-1]}", file=sys.stderr, flush=True)
        # Torch-Pruning's pipelines at the first variant's MACs
        context = MethodContext(
            model=model,
            greedy=results[variants[0][0]],
            loader=lambda: data,
            example_inputs=example,
            prune=variants[0][1],
            seed=0,
            device=torch.device("cpu"),
            progress=False,
            loss_fn=loss_fn,
        )
        for method in methods:
            start = time.perf_counter()
            pruned = METHODS[method].build(context)
            rows.append(
                {"target": target, "method": method, "seconds": time.perf_counter() - start}
                | _effnet_scores(pruned, model, tune, sizes, base=(macs, params))
            )
            print(f"effnet {target}: {method} {rows[-1]}", file=sys.stderr, flush=True)


def _effnet_scores(
    pruned: torch.nn.Module, model: torch.nn.Module, tune: DataBundle, sizes: Sizes, *, base
) -> dict:
    """MACs and params ratios, agreement before and after the fine-tuning steps, latency."""
    side = sizes.image_size
    macs, params = count(pruned, torch.zeros(1, 3, side, side))
    scores = agreement(pruned, model, tune.test, labelled=False)
    tuned = copy.deepcopy(pruned)
    recipe = TrainConfig(epochs=1, batch_size=sizes.batch, lr=0.005, seed=0)
    history = fit(
        tuned, tune, recipe, progress=False, device="cpu", distill=Distillation(), teacher=model
    )
    return {
        "macs": macs / base[0],
        "params": params / base[1],
        "agree": scores["agree"],
        "kl": scores["kl"],
        "agree_tuned": history[-1]["test_agree"],
        "kl_tuned": history[-1]["test_kl"],
        **latencies(pruned, (3, side, side)).to_json(),
    }


def effnet_table(rows: list[dict], sizes: Sizes) -> str:
    lines = [
        f"EfficientNet-Lite0, label-free, {sizes.image_size}x{sizes.image_size}: top-1 "
        f"agreement % / KL with the unpruned model on held-out crops, right after pruning and "
        f"after {sizes.steps} distillation steps of batch {sizes.batch}",
        "| MACs | method | MACs ratio | params | agree | KL | agree tuned | KL tuned | "
        "seconds* | ms b=1* |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']:.0%} | {r['method']} | {r['macs']:.3f} | {r['params']:.3f} | "
            f"{100 * r['agree']:.1f} | {r['kl']:.3f} | {100 * r['agree_tuned']:.1f} | "
            f"{r['kl_tuned']:.3f} | {r['seconds']:.0f} | {1e3 * r['latency_b1']:.1f} |"
        )
    return "\n".join(lines)


FASHION_MODELS = ("resnet20", "mobilenet_v2")


def fashion(
    bench: Path,
    sizes: Sizes,
    targets: list[float],
    methods: list[str],
    models: list[str],
    gfs: list[str],
) -> dict:
    """``{model: [per seed {"base": ..., target: {method: row}}]}`` (``pipelines.py``'s runs;
    ``gfs`` is the row of the first of the ``gfs`` variants, the record's ``gfs``)."""
    full = load_data(f"fashion-mnist:{bench / 'fashion-mnist'}")
    bundle = dataclasses.replace(
        full,
        train=Subset(full.train, range(min(sizes.train_images, len(full.train)))),
        test=Subset(full.test, range(min(sizes.test_images, len(full.test)))),
    )
    config = _gfs(sizes, gfs)[0][1]
    runs: dict = {}
    for model_name in models:
        options = {}
        if model_name == "mobilenet_v2":
            options = {"small_input": True, "width_mult": sizes.mobilenet_width}
        runs[model_name] = []
        for seed in range(sizes.seeds):
            model = train_zoo(
                model_name, bundle, seed=seed, epochs=sizes.pretrain_epochs, lr=0.05, **options
            )
            out: dict = {}
            for target in targets:
                finetune = TrainConfig(epochs=max(sizes.epochs), batch_size=64, lr=0.01, seed=seed)
                scratch = TrainConfig(
                    epochs=sizes.pretrain_epochs + max(sizes.epochs),
                    batch_size=64,
                    lr=0.05,
                    label_smoothing=0.0,
                    seed=seed,
                )
                compared = compare(
                    model,
                    bundle,
                    CompareConfig(
                        macs=target,
                        finetune=finetune,
                        epochs=sizes.epochs,
                        methods=("gfs", *methods, "scratch"),
                        prune=config,
                        scratch=scratch,
                        batch_size=64,
                        seed=seed,
                    ),
                    progress=False,
                )
                out["base"] = compared.results["base"]
                out[str(target)] = compared.results["methods"]
                print(f"fashion {model_name} seed {seed} {target}: done", file=sys.stderr)
            runs[model_name].append(out)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("effnet", "fashion"), required=True)
    parser.add_argument("--quick", action="store_true", help="small settings (minutes)")
    parser.add_argument("--bench", type=Path, default=Path(".bench"), help="setup_real.sh's")
    parser.add_argument("--targets", type=float, nargs="+", help="MACs ratios to keep")
    parser.add_argument("--methods", default=",".join(TP), help="besides gfs, comma-separated")
    parser.add_argument(
        "--models", default=",".join(FASHION_MODELS), help="fashion: comma-separated"
    )
    parser.add_argument(
        "--gfs", default="default", help=f"gfsprune's variants, comma-separated: {list(GFS)}"
    )
    parser.add_argument("--image-size", type=int, help="effnet: input side instead of the sizes'")
    parser.add_argument("--batch", type=int, help="effnet: batch instead of the sizes'")
    parser.add_argument("--steps", type=int, help="effnet: fine-tuning steps instead of the sizes'")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    changed = {"image_size": args.image_size, "batch": args.batch, "steps": args.steps}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in changed.items() if v is not None})
    gfs = [v for v in args.gfs.split(",") if v]
    unknown = sorted(set(gfs) - set(GFS))
    if unknown:
        parser.error(f"--gfs: unknown variants {unknown}; choose from {list(GFS)}")
    methods = [m for m in args.methods.split(",") if m]
    targets = args.targets or ([0.75, 0.5] if args.case == "effnet" else [0.5, 0.25])
    record = {
        "case": args.case,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)",
        "load_average_start": os.getloadavg(),
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "sizes": dataclasses.asdict(sizes),
        "gfs": {name: config.settings() for name, config in _gfs(sizes, gfs)},
    }
    if args.case == "effnet":
        record["rows"] = []
        effnet(args.bench, sizes, targets, methods, gfs, record["rows"])
        table = effnet_table(record["rows"], sizes)
    else:
        record["gfs"] = json.dumps(record["gfs"])
        record["runs"] = fashion(args.bench, sizes, targets, methods, args.models.split(","), gfs)
        table = None
    record["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=str))
    if table is None:
        fashion_report(record)
    else:
        print(table)
    print(f"* timing under load average {record['load_average_end'][0]:.1f}")


if __name__ == "__main__":
    main()
