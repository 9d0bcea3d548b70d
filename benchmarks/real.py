"""Real pretrained networks and real data (issue 30): every method side by side at one MACs.

Needs the material of ``make bench-real-setup`` (``benchmarks/setup_real.sh``) in ``--bench``
(default ``.bench``). Three cases:

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
  the largest budget's epochs; ``--methods`` without ``scratch`` leaves it out), over seeds;
  tables as ``pipelines.py`` prints them;
- ``brown``: a small LLaMA-style language model trained here on 450 of the Brown corpus's
  500 files (:mod:`brown_lm`: word-level tokenizer, an ``hf:DIR`` folder cached in
  ``--bench``, so reruns skip training), its attention heads and MLP neurons pruned
  **label-free** (KL to the unpruned model's next-token distributions on a few training
  batches) to each ``--targets`` share of their MACs by ``gfs-fast`` (the fast schedule, as
  ``--quick`` runs it elsewhere: the default pipeline takes hours here), ``gfs-recon``
  (``PruneConfig(objective=Reconstruction(), candidates=None)``), ``tp-l2-heads`` and
  ``tp-l2-global-heads`` (Torch-Pruning's ``MetaPruner`` with its head pruning, L2
  magnitude, one ratio for heads and neurons, per layer or global, bisected to the target's
  MACs); measured by held-out perplexity (the 50 held-out files) right after pruning and
  after the same distillation fine-tuning (AdamW steps) for every method, with CPU seconds
  to prune and params. ``--methods`` picks among these (all by default).

Methods: ``gfs`` (gfsprune: the default selection, or with ``--quick`` the fast schedule
with a small screen, named ``gfs-fast`` then) and Torch-Pruning's pipelines (``tp-l1``,
``tp-l2-global``, ``tp-taylor-global``, ``tp-lamp-global``; :mod:`gfsprune.workflow.methods`),
their pruning ratio bisected to gfs's MACs within 1%. ``--quick`` shrinks everything (input
size, calibration and test samples, training subsets, epochs, seeds) so that a case runs in
minutes on one CPU core; the sizes are in the JSON record.

    .venv/bin/python benchmarks/real.py --case effnet --quick --json effnet.json
    .venv/bin/python benchmarks/real.py --case fashion --quick --json fashion.json
    .venv/bin/python benchmarks/real.py --case brown --quick --json brown.json

Timing columns (seconds, latency) are only meaningful on an otherwise idle machine; the
record holds the load average at the start and end of the run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

# Run as a script, this file's folder is sys.path[0], where transformers.py (a benchmark)
# would shadow the transformers package that hf: models load with: the folder goes last.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import brown_lm  # noqa: E402
import efficientnet_lite  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from budgets import prunable_share  # noqa: E402
from pipelines import report as fashion_report  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402
from trained import train_zoo  # noqa: E402

import gfsprune  # noqa: E402
from gfsprune import Macs, PruneConfig, distill, prune  # noqa: E402
from gfsprune.core.allocate import Curves  # noqa: E402
from gfsprune.core.counting import count  # noqa: E402
from gfsprune.core.losses import DistillLoss  # noqa: E402
from gfsprune.core.schedules import Exact, Fast  # noqa: E402
from gfsprune.models import load_weights  # noqa: E402
from gfsprune.scoring import Reconstruction  # noqa: E402
from gfsprune.workflow.compare import CompareConfig, compare  # noqa: E402
from gfsprune.workflow.data import DataBundle, load_data, make_loader  # noqa: E402
from gfsprune.workflow.distillation import Distillation, agreement  # noqa: E402
from gfsprune.workflow.latency import latencies  # noqa: E402
from gfsprune.workflow.methods import METHODS, MethodContext, match_macs  # noqa: E402
from gfsprune.workflow.train import TrainConfig, fit  # noqa: E402

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
    first_seed: int = 0  # fashion: seeds first_seed .. first_seed + seeds - 1 (split a run)


FULL = Sizes(224, 32, 256, 200, None, 60_000, 10_000, 30, (0, 1, 5), 3, 1.0)
QUICK = Sizes(96, 4, 64, 8, 4, 2_000, 1_000, 2, (0, 1), 1, 0.5)


#: gfsprune's variants (``--gfs``): the row's name and its options.
GFS = {
    "default": ("gfs", PruneConfig()),
    "recon": (
        "gfs-recon",
        PruneConfig(objective=Reconstruction(), candidates=None, allocator="uniform"),
    ),
    "intercept": ("gfs-intercept", PruneConfig(objective=Reconstruction(intercept=True))),
    "no-intercept": ("gfs-no-intercept", PruneConfig(objective=Reconstruction(intercept=False))),
    "auto": ("gfs-auto", PruneConfig(objective=Reconstruction(ridge="auto"))),
    "rows-8k": ("gfs-rows-8k", PruneConfig(objective=Reconstruction(rows=8192))),
    "from-input": ("gfs-from-input", PruneConfig(objective=Reconstruction(resume_gib=0))),
    "recon-curves": (
        "gfs-recon-curves",
        PruneConfig(
            objective=Reconstruction(), candidates=None, allocator=Curves(schedule=Exact())
        ),
    ),
}


def _gfs(sizes: Sizes | BrownSizes, variants: list[str]) -> list[tuple[str, PruneConfig]]:
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

    def calibration() -> tuple:
        """The calibration batches and the distillation loss: every method sees the same
        crops in the same order (each pass over a shuffled loader draws a new order)."""
        loader = make_loader(bundle.train, batch_size=sizes.batch, shuffle=True, seed=0)
        return distill(model, loader)

    example = torch.zeros(1, 3, side, side)
    macs, params = count(model, example)
    variants = _gfs(sizes, gfs)

    def record(target: float, method: str, pruned: torch.nn.Module, seconds: float) -> None:
        rows.append(
            {"target": target, "method": method, "seconds": seconds}
            | _effnet_scores(pruned, model, tune, sizes, base=(macs, params))
        )
        print(f"effnet {target}: {method} {rows[-1]}", file=sys.stderr, flush=True)

    for target in targets:
        results = {}
        for name, config in variants:
            data, loss_fn = calibration()
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
            record(target, name, result.model, seconds)
        # Torch-Pruning's pipelines at the first variant's MACs
        context = MethodContext(
            model=model,
            greedy=results[variants[0][0]],
            loader=lambda: calibration()[0],
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
            record(target, method, pruned, time.perf_counter() - start)


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
        for seed in range(sizes.first_seed, sizes.first_seed + sizes.seeds):
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
                        methods=("gfs", *methods),
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


@dataclasses.dataclass(frozen=True)
class BrownSizes:
    """How big a ``brown`` run is."""

    train_steps: int  # AdamW steps of batch 32 training the base model (brown_lm.py)
    calibration: int  # pruning batches, the same for every method
    calibration_batch: int  # training blocks of 64 tokens per pruning batch
    steps: int  # distillation fine-tuning steps, the same for every method
    batch: int  # fine-tuning batch (blocks)
    lr: float  # fine-tuning peak learning rate (AdamW, brown_lm.adamw's schedule)
    test_blocks: int  # held-out blocks of 64 tokens measured (of 1,810)
    screen: int  # gfs-fast: candidates scored exactly per step


BROWN_FULL = BrownSizes(600, 2, 8, 40, 16, 5e-4, 1024, 4)
BROWN_QUICK = BrownSizes(20, 1, 2, 4, 4, 5e-4, 64, 2)


BROWN_TP = {"tp-l2-heads": False, "tp-l2-global-heads": True}  # name: global_pruning


def brown(
    bench: Path, sizes: BrownSizes, targets: list[float], methods: list[str], rows: list[dict]
) -> dict:
    """Append the rows of the Brown corpus case to ``rows`` (one per target and method, as
    each is measured); return the base model's recipe (:mod:`brown_lm`).

    ``targets`` are shares of the MACs of the heads and MLP neurons (the prunable MACs:
    attention products included; embeddings, norms and the tied output layer are not
    prunable), as ``transformers.py`` counts them."""
    folder = bench / ("brown-lm-quick" if sizes.train_steps < 100 else "brown-lm")
    model, recipe = brown_lm.train(bench / "brown.txt", folder, steps=sizes.train_steps)
    test = brown_lm.blocks(folder, "test.txt")[: sizes.test_blocks]
    recipe["measured_perplexity"] = brown_lm.perplexity(model, test)
    train = brown_lm.blocks(folder, "train.txt")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    size = sizes.calibration_batch
    calibration = [
        {"input_ids": train[order[size * i : size * (i + 1)]]} for i in range(sizes.calibration)
    ]
    example = {"input_ids": train[:1]}
    data, loss_fn = distill(model, calibration, kind="kl")
    macs, params = count(model, example)
    greedy = _brown_gfs(sizes)
    tune = train[order[size * sizes.calibration :]]
    teacher = data.teacher  # distill's frozen copy of the unpruned model

    def to_teacher(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference = teacher(input_ids=ids)
        return DistillLoss("kl")(logits, reference)

    for share in targets:
        ratio = prunable_share(model, example, share)
        built = {}
        for name, config in greedy.items():
            if name not in methods:
                continue
            torch.manual_seed(0)
            start = time.process_time()
            result = prune(
                model,
                data,
                example,
                target=Macs(ratio),
                config=config,
                loss_fn=loss_fn,
                progress=False,
            )
            built[name] = (result.model, time.process_time() - start)
            print(f"brown {share}: {name} done", file=sys.stderr, flush=True)
        for name, global_pruning in BROWN_TP.items():
            if name in methods:
                start = time.process_time()
                matched = _tp_heads(model, example, ratio, global_pruning=global_pruning)
                built[name] = (matched.model, time.process_time() - start)
        for name, (pruned, seconds) in built.items():
            pruned_macs, pruned_params = count(pruned, example)
            tuned = copy.deepcopy(pruned)
            batches = brown_lm.shuffled(tune, sizes.batch, seed=0)
            brown_lm.adamw(tuned, batches, to_teacher, steps=sizes.steps, lr=sizes.lr)
            rows.append(
                {
                    "target": share,
                    "method": name,
                    "seconds": seconds,
                    "macs": pruned_macs / macs,
                    "params": pruned_params / params,
                    "perplexity": brown_lm.perplexity(pruned, test),
                    "perplexity_tuned": brown_lm.perplexity(tuned, test),
                }
            )
            print(f"brown {share}: {name} {rows[-1]}", file=sys.stderr, flush=True)
    return recipe


def _brown_gfs(sizes: BrownSizes) -> dict[str, PruneConfig]:
    """The brown case's gfsprune rows: the fast schedule (``_gfs``'s) and the reconstruction
    objective with every other option at its default."""
    return dict(_gfs(sizes, ["default"])) | {
        "gfs-recon": PruneConfig(objective=Reconstruction(), candidates=None)
    }


def _tp_heads(model: nn.Module, example: dict, target: float, *, global_pruning: bool):
    """Torch-Pruning's ``MetaPruner`` on the LLaMA model's attention heads and MLP neurons:
    L2 magnitude of each group (``GroupMagnitudeImportance(p=2)``), one ratio of heads
    (``head_pruning_ratio``, ``prune_num_heads``; head size kept) and of neurons, in every
    layer or (``global_pruning``) over all layers ranked together; the residual stream
    untouched; the ratio bisected to ``target`` (``match_macs``)."""

    def prune_at(ratio: float) -> nn.Module:
        trial = copy.deepcopy(model)
        llama = trial.model
        heads = {}
        ignored = [llama.lm_head, llama.model.embed_tokens]
        for layer in llama.model.layers:
            attention = layer.self_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                heads[projection] = llama.config.num_attention_heads
            ignored += [attention.o_proj, layer.mlp.down_proj]
        with warnings.catch_warnings():  # the norms' weights are in the residual stream
            warnings.simplefilter("ignore")
            tp.pruner.MetaPruner(
                trial,
                example,
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                pruning_ratio=ratio,
                head_pruning_ratio=ratio,
                num_heads=heads,
                prune_num_heads=True,
                prune_head_dims=False,
                ignored_layers=ignored,
                global_pruning=global_pruning,
            ).step()
        return trial

    return match_macs(prune_at, example, macs=count(model, example)[0], target=target)


def brown_table(rows: list[dict], sizes: BrownSizes, recipe: dict) -> str:
    lines = [
        f"Brown corpus, label-free: held-out perplexity (unpruned "
        f"{recipe['measured_perplexity']:.1f}) right after pruning and after "
        f"{sizes.steps} distillation steps of batch {sizes.batch}, lr {sizes.lr}",
        "| prunable MACs | method | MACs ratio | params | ppl | ppl tuned | CPU s* |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']:.0%} | {r['method']} | {r['macs']:.3f} | {r['params']:.3f} | "
            f"{r['perplexity']:.1f} | {r['perplexity_tuned']:.1f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def _overridden(sizes: Sizes | BrownSizes, settings: list[str]) -> Sizes | BrownSizes:
    """``sizes`` with each ``FIELD=VALUE`` of ``settings`` replaced (the value converted to
    the field's type; a tuple from comma-separated values)."""
    changed = {}
    for setting in settings:
        field, _, value = setting.partition("=")
        if field not in {f.name for f in dataclasses.fields(sizes)}:
            raise ValueError(f"{type(sizes).__name__} has no field {field!r}")
        current = getattr(sizes, field)
        if isinstance(current, tuple):
            changed[field] = tuple(int(v) for v in value.split(","))
        elif current is None or value == "None":
            changed[field] = None if value == "None" else int(value)
        else:
            changed[field] = type(current)(value)
    return dataclasses.replace(sizes, **changed)


def _merged(records: list[dict]) -> dict:
    """One fashion record of several runs of the same settings and gfs options, each
    model's seeds in the records' order."""

    def settings(record: dict) -> tuple:
        sizes = {k: v for k, v in record["sizes"].items() if k != "first_seed"}
        return record.get("case"), record.get("gfs"), sizes

    if any(settings(r) != settings(records[0]) for r in records[1:]):
        raise ValueError("the records differ in case, gfs options or sizes: not one run")
    runs: dict = {}
    for record in records:
        for model, seeds in record["runs"].items():
            runs.setdefault(model, []).extend(seeds)
    return {**records[0], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("effnet", "fashion", "brown"), required=True)
    parser.add_argument("--quick", action="store_true", help="small settings (minutes)")
    parser.add_argument("--bench", type=Path, default=Path(".bench"), help="setup_real.sh's")
    parser.add_argument("--targets", type=float, nargs="+", help="MACs ratios to keep")
    parser.add_argument(
        "--methods",
        help="besides gfs, comma-separated (default all; fashion: and scratch; ',': none)",
    )
    parser.add_argument(
        "--models", default=",".join(FASHION_MODELS), help="fashion: comma-separated"
    )
    parser.add_argument(
        "--gfs", default="default", help=f"gfsprune's variants, comma-separated: {list(GFS)}"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one of the sizes (effnet, fashion: Sizes' fields, e.g. steps=50, "
        "epochs=0,1,5; brown: BrownSizes'); repeatable",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="fashion: print one report of these records (runs split by first_seed) and exit",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args()
    if args.merge:
        try:
            fashion_report(_merged([json.loads(p.read_text()) for p in args.merge]))
        except ValueError as err:
            parser.error(f"--merge: {err}")
        return
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    gfs = [v for v in args.gfs.split(",") if v]
    unknown = sorted(set(gfs) - set(GFS))
    if unknown:
        parser.error(f"--gfs: unknown variants {unknown}; choose from {list(GFS)}")
    every = [*TP, "scratch"] if args.case == "fashion" else TP
    methods = [m for m in (args.methods or ",".join(every)).split(",") if m]
    targets = args.targets or ([0.5, 0.25] if args.case == "fashion" else [0.75, 0.5])
    if args.case == "brown":
        sizes = BROWN_QUICK if args.quick else BROWN_FULL
    try:
        sizes = _overridden(sizes, args.set)
    except ValueError as err:
        parser.error(f"--set: {err}")
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
    elif args.case == "brown":
        record["rows"] = []
        record["transformers"] = importlib.metadata.version("transformers")
        record["torch_pruning"] = tp.__version__
        record["gfs"] = {name: c.settings() for name, c in _brown_gfs(sizes).items()}
        known = [*_brown_gfs(sizes), *BROWN_TP]
        methods = known if args.methods is None else methods
        if set(methods) - set(known):
            parser.error(f"brown --methods are among {', '.join(known)}")
        record["recipe"] = brown(args.bench, sizes, targets, methods, record["rows"])
        table = brown_table(record["rows"], sizes, record["recipe"])
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
