"""The ``gfsprune`` command line: argument parsing and error reporting only.

Each subcommand parses its options here and calls the library (the jobs themselves are in
:mod:`gfsprune.workflow.jobs`); a ``GfsPruneError`` (bad input the user can fix) is printed
as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gfsprune import distributed, models
from gfsprune._version import __version__
from gfsprune.errors import ConfigError, GfsPruneError
from gfsprune.targets import Latency, Macs, Params, Target, Tolerance
from gfsprune.workflow import jobs as workflow
from gfsprune.workflow.compare import CompareConfig, Comparison, parse_epochs, parse_methods
from gfsprune.workflow.data import SPECS
from gfsprune.workflow.distillation import DEFAULT_ALPHA, Distillation
from gfsprune.workflow.jobs import Evaluation, ModelInfo, Source
from gfsprune.workflow.methods import METHODS
from gfsprune.workflow.report import format_table, summarize
from gfsprune.workflow.selection_flags import add_selection_flags, selection_config
from gfsprune.workflow.train import TrainConfig

Handler = Callable[[argparse.Namespace], int | None]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _theory(args: argparse.Namespace) -> None:
    from gfsprune.theory import twolayer

    result = twolayer.rates_experiment(quick=args.quick, seed=args.seed)
    paths = twolayer.save_rates(result, args.out)
    print(twolayer.format_slopes(result))
    print("wrote " + ", ".join(str(p) for p in paths))


def _models(args: argparse.Namespace) -> None:
    for name in models.available(args.source, args.pattern):
        print(name)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the models gfsprune can build",
        description="List the model specs --model accepts: the zoo's names, or torchvision's "
        "and timm's classifiers where those packages import.",
    )
    p.add_argument(
        "--source",
        choices=models.LISTABLE,
        default="zoo",
        help="where the models come from (default zoo)",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(handler=_models, command_name="models")


def _add_theory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory",
        help="reproduce the paper's two-layer convergence rates (loss vs. subnetwork size)",
        description="Greedy forward selection vs. random subsets, backward elimination and "
        "training from scratch on a mean-field two-layer network; writes rates.png and "
        "rates.json and prints the fitted log-log slopes. It runs in NumPy on the CPU "
        "(seconds to minutes), so it takes no --device.",
    )
    p.add_argument("--out", type=Path, default=Path("gfsprune-theory"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a smaller run (seconds) for smoke tests")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_theory, command_name="theory")


def _common() -> argparse.ArgumentParser:
    """Options every pruning and training command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--device",
        help="where to compute, e.g. cpu or cuda:0 (default: cuda if available, else cpu)",
    )
    common.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, but at most one less than the CPU count, "
        "so that a small machine keeps a core for everything else)",
    )
    common.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    return common


def _add_recipe(p: argparse.ArgumentParser, *, budgets: bool = False) -> None:
    """The training options of train, finetune and compare (defaults: the paper's recipe);
    with ``budgets``, ``--epochs`` is a comma-separated list of fine-tuning budgets."""
    defaults = TrainConfig()
    if budgets:
        p.add_argument(
            "--epochs",
            type=parse_epochs,
            required=True,
            help="fine-tuning budgets in epochs, comma-separated (e.g. 0,1,5): each method "
            "is fine-tuned once per budget and the report has a column per budget",
        )
    else:
        p.add_argument("--epochs", type=int, required=True, help="passes over the training set")
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"samples per step (default {defaults.batch_size})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=defaults.lr,
        help=f"peak learning rate of the cosine schedule (default {defaults.lr})",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help=f"weight decay, none on BN and biases (default {defaults.weight_decay})",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_workers, default=0, help="data loader processes (default 0)")


def _recipe(args: argparse.Namespace, *, epochs: int | None = None) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs if epochs is None else epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        workers=args.workers,
    )


def _add_distill(p: argparse.ArgumentParser) -> None:
    """--distill and its options (:class:`gfsprune.workflow.distillation.Distillation`)."""
    default = Distillation()
    p.add_argument(
        "--distill",
        nargs="?",
        const="auto",
        choices=("auto", "kl", "mse"),
        help="learn the unpruned model's outputs instead of labels (none needed, e.g. "
        "images:DIR): KL of the logits (kl) or MSE of the outputs (mse); auto (the "
        "default) takes kl where the model returns (batch, classes)",
    )
    p.add_argument(
        "--distill-temperature",
        type=float,
        default=default.temperature,
        help="with --distill kl: softens both distributions; the KL term is multiplied by "
        f"its square (default {default.temperature:g})",
    )
    p.add_argument(
        "--distill-alpha",
        type=float,
        help="with --distill on labelled data: the loss is alpha*CE(labels) + "
        f"(1-alpha)*T^2*KL (Hinton et al.; default {DEFAULT_ALPHA} with labels, 0 without)",
    )


def _distillation(args: argparse.Namespace) -> Distillation | None:
    """The :class:`Distillation` of the options :func:`_add_distill` added, or None."""
    if args.distill is None:
        changed = args.distill_alpha is not None or args.distill_temperature != 1.0
        if changed:
            raise ConfigError("--distill-temperature and --distill-alpha go with --distill")
        return None
    return Distillation(args.distill, args.distill_temperature, args.distill_alpha)


def _target(args: argparse.Namespace) -> Target:
    if args.macs is not None:
        return Macs(args.macs)
    if args.latency is not None:
        return Latency(args.latency, batch=args.latency_batch)
    return Params(args.params) if args.params is not None else Tolerance(args.tolerance)


def _data_help(what: str) -> str:
    return (
        f"data spec: {', '.join(SPECS)}, or text:FILE (one document per line, with --model "
        f"hf:DIR, for prune and eval) (default: the data {what} was trained on; "
        "required with --model)"
    )


_MODEL_HELP = (
    "build the model from a spec instead of a folder: a zoo name, torchvision:NAME, "
    "timm:NAME (random weights, pass --weights), hf:DIR (a local Hugging Face folder, "
    "offline), or your own code as module.path:callable or path/to/file.py:callable. "
    "The last two IMPORT AND RUN THAT CODE; gfsprune never runs code a folder merely "
    "records, so name it here again to rebuild such a folder"
)
_MODEL_ONLY = ("weights", "num_classes", "input_size", "mean", "std")


def _numbers(kind: type, count: int, text: str, *, alone: bool = False) -> tuple:
    """``count`` comma-separated numbers of ``kind`` (an argparse type), or with ``alone``
    a single one as well."""
    try:
        values = tuple(kind(item) for item in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count and not (alone and len(values) == 1):
        either = "1 or " if alone else ""
        raise argparse.ArgumentTypeError(
            f"expected {either}{count} comma-separated {kind.__name__}s, got {text!r}"
        )
    return values


def _data_spec(text: str) -> str:
    """A data spec whose path (``cifar10:DIR``, ``text:FILE``, ...) is made absolute where it
    exists: the folders written record it, and ``eval`` or ``--resume`` from another
    directory must find the same data (issue 28)."""
    name, colon, arg = text.partition(":")
    if colon and arg and not arg.isdigit() and Path(arg).expanduser().exists():
        return f"{name}:{Path(arg).expanduser().resolve()}"
    return text  # a count (synthetic:N), or a path that is not there: its error names it


def _seed(text: str) -> int:
    """A seed torch's generators take: an integer in [0, 2**63)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return seed


def _workers(text: str) -> int:
    """Data loader processes: 0 to the CPU count (each is a process; issue 28: 100000)."""
    cpus = os.cpu_count() or 1
    try:
        workers = int(text)
    except ValueError:
        workers = -1
    if not 0 <= workers <= cpus:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 0 to {cpus} (this machine's CPUs), got {text!r}"
        )
    return workers


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """--weights, --num-classes, --input-size, --mean, --std (what goes with --model), --data."""
    p.add_argument("--data", type=_data_spec, help=_data_help("the model"))
    p.add_argument(
        "--weights",
        type=Path,
        help="with --model: a .safetensors file or PyTorch weights file (read with "
        "torch.load(weights_only=True); a bare state dict or one under 'state_dict'/'model', "
        "'module.'/'model.' prefixes stripped); without it, freshly initialised (seeded) weights",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help="with --model: classifier outputs (default: the data's class count)",
    )
    p.add_argument(
        "--input-size",
        type=lambda text: _numbers(int, 3, text, alone=True),
        metavar="C,H,W|L",
        help="with --model: one input's shape; cifar10 and imagefolder images are resized to "
        "it (default: the model's own where known, e.g. timm's pretrained_cfg, else the "
        "data's); for text:FILE the tokens per sample, L (default 128, or the model's limit)",
    )
    p.add_argument(
        "--mean",
        type=lambda text: _numbers(float, 3, text),
        metavar="R,G,B",
        help="with --model: per-channel mean that cifar10 and imagefolder images are "
        "normalised with, together with --std (default: the model's own where known, e.g. "
        "timm's pretrained_cfg, else ImageNet's); the output folder records both",
    )
    p.add_argument(
        "--std",
        type=lambda text: _numbers(float, 3, text),
        metavar="R,G,B",
        help="with --model: per-channel standard deviation, together with --mean",
    )


def _model_spec(args: argparse.Namespace) -> ModelInfo | None:
    """The --model request, or None; model-only options without --model are refused."""
    if args.model is None:
        given = [f"--{key.replace('_', '-')}" for key in _MODEL_ONLY if getattr(args, key)]
        if given:
            raise ConfigError(
                f"{', '.join(given)} go(es) with --model; a folder records the model's weights "
                "and sizes itself"
            )
        return None
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be a positive integer. Got {args.num_classes}.")
    return ModelInfo(
        args.model,
        options={} if args.num_classes is None else {"num_classes": args.num_classes},
        input_shape=args.input_size,
        mean=args.mean,
        std=args.std,
    )


def _folder_or_spec(args: argparse.Namespace) -> tuple[Source, str | None]:
    """eval's and finetune's model: DIR, --model SPEC, or DIR rebuilt with --model SPEC."""
    if args.dir is None and args.model is None:
        raise ConfigError("pass a folder (DIR) written by gfsprune, or --model SPEC")
    if args.dir is None:
        return _model_spec(args), None
    if args.model is not None:
        given = [f"--{key.replace('_', '-')}" for key in _MODEL_ONLY if getattr(args, key)]
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot change a folder's model; leave them out (DIR "
                "records them), or give --model without DIR"
            )
    return args.dir, args.model


def _train(args: argparse.Namespace) -> None:
    history = workflow.train_model(
        args.model,
        args.out,
        data=args.data,
        config=_recipe(args),
        width_mult=args.width_mult,
        resume=args.resume,
        progress=args.progress,
        device=args.device,
    )
    last = history[-1]
    _say(
        f"trained {args.model} for {last['epoch']} epochs: test accuracy "
        f"{last['test_acc']:.2%}, loss {last['test_loss']:.4f}; wrote {args.out}"
    )


def _prune(args: argparse.Namespace) -> None:
    config = selection_config(args, seed=args.seed, device=args.device)
    result, before, after = workflow.prune_model(
        _model_spec(args) or args.model_dir,
        args.out,
        target=_target(args),
        config=config,
        batch_size=args.batch_size,
        data=args.data,
        weights=args.weights,
        resume=args.resume,
        progress=args.progress,
        distill=_distillation(args),
    )
    widths = ", ".join(f"{p.name} {p.width}->{len(p.kept)}" for p in result.plan)
    _say(f"kept channels: {widths}")
    _say(f"{'':9}{'before':>12}{'after':>12}{'ratio':>9}")
    _say(f"{'MACs':9}{result.macs_before:>12,}{result.macs_after:>12,}{result.macs_ratio:>9.1%}")
    _say(
        f"{'params':9}{result.params_before:>12,}{result.params_after:>12,}"
        f"{result.params_ratio:>9.1%}"
    )
    if "acc" in before.scores:
        _say(
            f"{'accuracy':9}{before.scores['acc']:>12.2%}{after.scores['acc']:>12.2%}"
            "   (test split, before fine-tuning)"
        )
        _say(f"{'loss':9}{before.scores['loss']:>12.4f}{after.scores['loss']:>12.4f}")
    if "agree" in after.scores:
        _say(
            f"{'agree':9}{before.scores['agree']:>12.2%}{after.scores['agree']:>12.2%}"
            "   (test split: top-1 agreement with the unpruned model)"
        )
        _say(f"{'KL':9}{before.scores['kl']:>12.4f}{after.scores['kl']:>12.4f}")
    if "mse" in after.scores:
        _say(
            f"{'MSE':9}{before.scores['mse']:>12.4f}{after.scores['mse']:>12.4f}"
            "   (test split: to the unpruned model's outputs)"
        )
    if "distill" in before.scores:
        _say(
            f"{'distill':9}{before.scores['distill']:>12.4f}{after.scores['distill']:>12.4f}"
            "   (test split: distance to the unpruned model's outputs)"
        )
    for device, threads, was, now in _latencies(before, after):
        label = f"{device} latency, median{threads}"
        for batch, seconds in was.items():
            ms, ms_after = 1e3 * seconds, 1e3 * now[batch]
            _say(
                f"{f'ms b={batch}':9}{ms:>12.3f}{ms_after:>12.3f}{ms / ms_after:>8.2f}x   ({label})"
            )
    for line in _budget_latency_lines(after.scores, target=repr(_target(args))):
        _say(line)
    _say(f"wrote {args.out}")


def _budget_latency_lines(scores: dict[str, float], *, target: str) -> list[str]:
    """What a latency budget got: its target, the latency its cost model predicted and the
    latency it measured at the budget's batch size, before and after pruning, and the
    measured speed-up ([] without a latency budget)."""
    if "budget_latency_after" not in scores:
        return []
    ms = {k: 1e3 * v for k, v in scores.items() if k.startswith("budget_latency_")}
    measured = ms["budget_latency_before"] / ms["budget_latency_after"]
    predicted = ms["budget_latency_predicted_after"] / ms["budget_latency_predicted_before"]
    return [
        f"target   {target}, at batch {scores['budget_latency_batch']:.0f}:",
        f"{'':9}{'predicted':>12}{ms['budget_latency_predicted_before']:>9.3f} ms ->"
        f"{ms['budget_latency_predicted_after']:>9.3f} ms  ({predicted:.1%})",
        f"{'':9}{'measured':>12}{ms['budget_latency_before']:>9.3f} ms ->"
        f"{ms['budget_latency_after']:>9.3f} ms  ({1 / measured:.1%}, speed-up {measured:.2f}x)",
    ]


def _latencies(*found: Evaluation) -> list[tuple]:
    """``(device, its threads, seconds per batch of each evaluation)`` for the CPU, and for
    the GPU where it was measured."""
    rows = [("CPU", f", {torch.get_num_threads()} thread(s)", *(e.latency.cpu for e in found))]
    if found[0].latency.gpu:
        rows.append(("GPU", "", *(e.latency.gpu for e in found)))
    return rows


def _finetune(args: argparse.Namespace) -> None:
    source, model_spec = _folder_or_spec(args)
    if args.out is None and args.dir is None:
        raise ConfigError("pass --out: with --model alone there is no DIR to write DIR/finetuned")
    out = args.out or Path(args.dir) / "finetuned"
    history = workflow.finetune_dir(
        source,
        out,
        config=_recipe(args),
        data=args.data,
        weights=args.weights,
        resume=args.resume,
        progress=args.progress,
        device=args.device,
        model_spec=model_spec,
        distill=_distillation(args),
    )
    last = history[-1]
    found = []
    if "test_acc" in last:
        found.append(f"test accuracy {last['test_acc']:.2%}, loss {last['test_loss']:.4f}")
    if "test_agree" in last:
        found.append(f"agreement {last['test_agree']:.2%}, KL {last['test_kl']:.4f}")
    if "test_mse" in last:
        found.append(f"MSE to the unpruned model {last['test_mse']:.4f}")
    _say(f"fine-tuned for {last['epoch']} epochs: {'; '.join(found)}; wrote {out}")


def _eval(args: argparse.Namespace) -> None:
    source, model_spec = _folder_or_spec(args)
    found = workflow.evaluate_dir(
        source, data=args.data, weights=args.weights, device=args.device, model_spec=model_spec
    )
    scores = found.scores
    if "acc" in scores:
        print(f"accuracy      {scores['acc']:.2%}")
        print(f"loss          {scores['loss']:.4f}")
    if "distill" in scores:
        print(f"distill       {scores['distill']:.4f} (to the unpruned model)")
    if "agree" in scores:
        print(f"agreement     {scores['agree']:.2%} (top-1, with the unpruned model)")
        print(f"KL            {scores['kl']:.4f} (to the unpruned model)")
    if "mse" in scores:
        print(f"MSE           {scores['mse']:.4f} (to the unpruned model's outputs)")
    print(f"MACs          {scores['macs']:,}")
    print(f"params        {scores['params']:,}")
    for device, threads, measured in _latencies(found):
        for batch, seconds in measured.items():
            print(f"{f'latency b={batch}':14}{1e3 * seconds:.3f} ms ({device}{threads}, median)")
    for line in _budget_latency_lines(scores, target="latency budget, when pruned"):
        print(line)


def _add_latency_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-batch",
        type=int,
        default=1,
        help="the batch size --latency is timed at (default 1; both 1 and 64 are reported)",
    )


def _compare(args: argparse.Namespace) -> None:
    latency = args.latency
    config = CompareConfig(
        macs=args.macs,
        latency=None if latency is None else Latency(latency, batch=args.latency_batch),
        finetune=_recipe(args, epochs=max(max(args.epochs), 1)),  # sizes scratch's training
        epochs=args.epochs,
        recalibrate=args.recalibrate,
        methods=parse_methods(args.methods),
        prune=selection_config(args),
        seed=args.seed,
        distill=_distillation(args),
    )
    comparison = workflow.compare_model(
        _model_spec(args) or args.model_dir,
        args.out,
        config=config,
        data=args.data,
        weights=args.weights,
        resume=args.resume,
        progress=args.progress,
        device=args.device,
    )
    _print_comparison(comparison, args.out)


def _demo(args: argparse.Namespace) -> None:
    comparison = workflow.demo(args.out, seed=args.seed, progress=args.progress, device=args.device)
    _print_comparison(comparison, args.out)


def _print_comparison(comparison: Comparison, out: Path) -> None:
    print(format_table(comparison.results))
    print()
    print("\n".join(summarize(comparison.results)))
    print(f"wrote {Path(out) / 'report.md'}, results.json, accuracy.png, widths.png")


def _say(text: str) -> None:
    """Print on the main process only (under torchrun every rank runs the command)."""
    if distributed.is_main():
        print(text)


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """--model-dir DIR or --model SPEC (one of them), the model options and --data."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-dir", metavar="DIR", help="trained model folder (written by `gfsprune train`)"
    )
    # --model-dir's former name, still accepted (a "checkpoint" is only the file a run resumes from)
    source.add_argument("--checkpoint", dest="model_dir", help=argparse.SUPPRESS)
    source.add_argument("--model", metavar="SPEC", help=_MODEL_HELP)
    _add_model_options(p)


def _add_folder_or_spec(p: argparse.ArgumentParser, written_by: str) -> None:
    """DIR or --model SPEC (or both: DIR's model rebuilt from SPEC), the model options, --data."""
    p.add_argument(
        "dir",
        type=Path,
        nargs="?",
        help=f"folder written by {written_by}; or give --model instead (with DIR, --model "
        "rebuilds DIR's model from SPEC: how to consent to running your own code)",
    )
    p.add_argument("--model", metavar="SPEC", help=_MODEL_HELP)
    _add_model_options(p)


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    common = _common()
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a zoo model",
        description="Train a zoo model with the paper's recipe (SGD Nesterov, "
        "cosine, label smoothing 0.1); writes a checkpoint (train_state.pt) every epoch.",
    )
    p.add_argument("--model", required=True, help="zoo model name, e.g. digits_cnn, resnet20")
    p.add_argument("--data", type=_data_spec, required=True, help=f"data spec: {', '.join(SPECS)}")
    p.add_argument("--out", type=Path, required=True, help="trained model folder to write")
    p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier (default 1)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_recipe(p)
    p.set_defaults(handler=_train, command_name="train", distributed=True)

    p = sub.add_parser(
        "prune",
        parents=[common],
        help="prune a trained model",
        description="Greedy forward selection of channels, layer by layer, on "
        "the training split; saves progress after every layer.",
    )
    _add_model_source(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--macs", type=float, help="keep this fraction of the MACs, in (0, 1)")
    target.add_argument("--params", type=float, help="keep this fraction of the parameters")
    target.add_argument(
        "--latency",
        type=float,
        help="keep this fraction of the latency measured on the run's device (the CPU with "
        "this run's threads, or --device), at --latency-batch",
    )
    target.add_argument(
        "--tolerance",
        type=float,
        help="per layer, add channels until the loss is within this relative "
        "increase of the layer's starting loss (the paper's rule)",
    )
    _add_latency_batch(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--seed", type=_seed, default=0, help="seeds batches and candidates")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (without it, an existing "
        "progress.json is refused)",
    )
    add_selection_flags(p)
    _add_distill(p)
    p.set_defaults(handler=_prune, command_name="prune", distributed=True)

    p = sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a pruned model",
        description="Fine-tune the pruned model in DIR with the paper's recipe; "
        "writes a checkpoint (train_state.pt) every epoch.",
    )
    _add_folder_or_spec(p, "`gfsprune prune` (or train)")
    p.add_argument("--out", type=Path, help="folder to write (default DIR/finetuned)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_recipe(p)
    _add_distill(p)
    p.set_defaults(handler=_finetune, command_name="finetune", distributed=True)

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate a trained or pruned model",
        description="Test accuracy and loss, MACs, parameters and measured latency "
        "(median of 5 runs after 2 warm-ups) at batch 1 and 64: on the CPU, and on the "
        "GPU where --device is one.",
    )
    _add_folder_or_spec(p, "train, prune or finetune")
    p.set_defaults(handler=_eval, command_name="eval")

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="the paper's comparisons",
        description="Prune to greedy forward selection's per-layer widths by "
        "every method, fine-tune each the same way, write results.json, "
        "report.md and plots.",
    )
    _add_model_source(p)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--macs", type=float, help="MACs ratio to keep, in (0, 1)")
    budget.add_argument(
        "--latency",
        type=float,
        help="instead: gfs keeps this fraction of the measured latency at --latency-batch, "
        "and Torch-Pruning's pipelines are matched to its measured latency",
    )
    _add_latency_batch(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted comparison in --out, reusing its finished methods",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="re-estimate every pruned model's BatchNorm statistics on training batches "
        "before it is measured and fine-tuned (every method alike)",
    )
    add_selection_flags(p, leave_out=("strategy",))  # the methods decide it
    _add_recipe(p, budgets=True)
    _add_distill(p)
    p.set_defaults(handler=_compare, command_name="compare")

    p = sub.add_parser(
        "demo",
        help="train, prune and compare on digits (under a minute on a CPU)",
        description="Train a small CNN on scikit-learn digits, compare every "
        "method at 50% MACs, print the table and write the report.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("gfsprune-demo"),
        help="output folder (default ./gfsprune-demo)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where to compute, e.g. cuda:0 (default cpu: fastest for this tiny model)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: faster for this tiny model)",
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    p.set_defaults(handler=_demo, command_name="demo")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per command."""
    parser = _Parser(
        prog="gfsprune",
        description="Structured pruning by greedy forward selection (Ye et al., ICML 2020).",
    )
    parser.add_argument("--version", action="version", version=f"gfsprune {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_jobs(sub)
    _add_theory(sub)
    _add_models(sub)
    return parser


# API option names whose flag is spelled otherwise (by its argparse dest).
_RENAMED = {"input_shape": "input_size", "model_spec": "model"}
# An option named as Python spells it: not inside a word or after a call's comma (a snippet
# such as ``load(DIR, model=SPEC)`` stays), with ``True`` or a value up to a separator.
_OPTION = re.compile(r"(?<![\w.])(?<!, )(?<!\w\()([a-z_]+)=(True\b|[^\s,;)]*)")


def as_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with the options the library names as the API spells them (``out=``,
    ``resume=True``, ``input_shape=``) written as this command line's flags.

    Example:
        >>> as_flags("pass resume=True, or another folder (out=)", {"resume": "--resume",
        ...          "out": "--out"})
        'pass --resume, or another folder (--out)'
    """

    def flag(match: re.Match) -> str:
        name, value = match.groups()
        option = flags.get(_RENAMED.get(name, name))
        if option is None:
            return match.group(0)
        return option if value in ("", "True") else f"{option} {value}"

    return _OPTION.sub(flag, message)


def _option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option's argparse dest and its (first) flag, over all subcommands."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _option_flags(sub)
        elif action.option_strings and action.help is not argparse.SUPPRESS:
            flags.setdefault(action.dest, action.option_strings[0])
    return flags


def default_threads() -> int:
    """torch's thread count, at most the CPU count less one (at least 1). On a 2-core machine
    whose other core is busy, torch's own default (2 threads) ran prune 8-20x slower than 1
    thread (oversubscription); larger machines keep torch's default."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


def _set_threads(threads: int | None) -> None:
    if threads is None:
        torch.set_num_threads(default_threads())
        return
    cpus = os.cpu_count() or 1
    if not 1 <= threads <= cpus:
        raise ConfigError(
            f"--threads must be an integer from 1 to {cpus} (this machine's CPUs). Got {threads}."
        )
    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # The reader of our output (e.g. `| head`) has gone: stop quietly, as `cat` does.
        # The interpreter's flush at exit would fail again, so stdout goes to devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command its pipe stopped


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    # the library's warnings (e.g. a scoring speed-up a model does not allow), one line each
    log = logging.StreamHandler(sys.stderr)
    log.setFormatter(logging.Formatter(f"gfsprune {args.command_name}: note: %(message)s"))
    logging.getLogger("gfsprune").addHandler(log)
    try:
        _set_threads(getattr(args, "threads", None))
        if getattr(args, "distributed", False):
            distributed.setup()  # joins the process group under torchrun, else does nothing
        return int(handler(args) or 0)
    except GfsPruneError as err:
        message = " ".join(line.strip() for line in str(err).splitlines())
        message = as_flags(message, _option_flags(parser))
        print(f"gfsprune {args.command_name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run it again with --resume to continue" if hasattr(args, "resume") else ""
        print(f"gfsprune {args.command_name}: interrupted{hint}.", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("gfsprune").removeHandler(log)
        distributed.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
