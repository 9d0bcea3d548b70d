"""The ``gfsprune`` command line: argument parsing and error reporting only.

Each subcommand parses its options here and calls the library (the jobs themselves are in
:mod:`gfsprune.workflow.jobs`); a ``GfsPruneError`` (bad input the user can fix) is printed
as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gfsprune import distributed, models
from gfsprune._version import __version__
from gfsprune.core.allocate import ALLOCATORS
from gfsprune.core.config import PruneConfig
from gfsprune.core.schedules import SCHEDULES
from gfsprune.core.strategies import STRATEGIES
from gfsprune.errors import ConfigError, GfsPruneError
from gfsprune.models.external import SOURCES
from gfsprune.scoring import EVALUATORS
from gfsprune.targets import Macs, Params, Target, Tolerance
from gfsprune.workflow import jobs as workflow
from gfsprune.workflow.compare import CompareConfig, Comparison, parse_methods
from gfsprune.workflow.data import SPECS
from gfsprune.workflow.methods import METHODS
from gfsprune.workflow.report import format_table, summarize
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
        choices=("zoo", *SOURCES),
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """The training options of train, finetune and compare (defaults: the paper's recipe)."""
    defaults = TrainConfig()
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")


def _recipe(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        workers=args.workers,
    )


def _add_selection(p: argparse.ArgumentParser, *, greedy_only: bool) -> None:
    """The options of :class:`gfsprune.PruneConfig` (defaults and meanings are its own)."""
    default = PruneConfig()
    p.add_argument(
        "--candidates",
        type=int,
        default=default.candidates,
        help=f"channels scored per greedy step, 0 for all (default {default.candidates})",
    )
    p.add_argument(
        "--no-rescale",
        dest="rescale",
        action="store_false",
        help="do not multiply kept channels by width/kept (the paper's mean-field average)",
    )
    p.add_argument(
        "--schedule",
        choices=sorted(SCHEDULES),
        default=None,
        help="exact: one pick per step among --candidates random channels (the paper's "
        "rule); fast: a first-order screen and several picks per step (default exact)",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=default.round_to,
        help="every pruned width a multiple of this, or the full width, e.g. 8 for fast "
        f"kernels (default {default.round_to}: any width)",
    )
    p.add_argument(
        "--allocator",
        choices=sorted(ALLOCATORS),
        default=default.allocator,
        help=f"how a MACs/params budget becomes per-layer widths (default {default.allocator})",
    )
    if greedy_only:
        return
    p.add_argument(
        "--evaluator",
        choices=sorted(EVALUATORS),
        default=default.evaluator,
        help="candidate scoring: batched (fast) or naive (the reference); the same losses",
    )
    p.add_argument(
        "--strategy",
        choices=sorted(STRATEGIES),
        default=default.strategy,
        help="greedy forward selection (default) or backward elimination",
    )


def _selection(args: argparse.Namespace, **options: object) -> PruneConfig:
    """The :class:`PruneConfig` of the options :func:`_add_selection` added."""
    if args.candidates < 0:
        raise ConfigError(
            f"--candidates must be 0 (all) or a positive integer. Got {args.candidates}."
        )
    extra = {k: getattr(args, k) for k in ("evaluator",) if hasattr(args, k)}
    return PruneConfig(
        candidates=args.candidates or None,
        rescale=args.rescale,
        schedule=args.schedule,
        round_to=args.round_to,
        allocator=args.allocator,
        **extra,
        **options,
    )


def _target(args: argparse.Namespace) -> Target:
    if args.macs is not None:
        return Macs(args.macs)
    return Params(args.params) if args.params is not None else Tolerance(args.tolerance)


def _data_help(what: str) -> str:
    return f"data spec: {', '.join(SPECS)} (default: the data {what} was trained on)"


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
    config = _selection(args, seed=args.seed, strategy=args.strategy, device=args.device)
    result, scores = workflow.prune_checkpoint(
        args.checkpoint,
        args.out,
        target=_target(args),
        config=config,
        batch_size=args.batch_size,
        data=args.data,
        resume=args.resume,
        progress=args.progress,
    )
    widths = ", ".join(f"{p.name} {p.width}->{len(p.kept)}" for p in result.plan)
    _say(f"kept channels: {widths}")
    _say(f"{'':9}{'before':>12}{'after':>12}{'ratio':>9}")
    _say(f"{'MACs':9}{result.macs_before:>12,}{result.macs_after:>12,}{result.macs_ratio:>9.1%}")
    _say(
        f"{'params':9}{result.params_before:>12,}{result.params_after:>12,}"
        f"{result.params_ratio:>9.1%}"
    )
    _say(
        f"{'accuracy':9}{scores['acc_before']:>12.2%}{scores['acc_after']:>12.2%}"
        "   (test split, before fine-tuning)"
    )
    _say(f"{'loss':9}{scores['loss_before']:>12.4f}{scores['loss_after']:>12.4f}")
    for batch in (1, 64):
        before, after = (1e3 * scores[f"latency_b{batch}_{w}"] for w in ("before", "after"))
        _say(
            f"{f'ms b={batch}':9}{before:>12.3f}{after:>12.3f}{before / after:>8.2f}x"
            f"   (CPU latency, median, {torch.get_num_threads()} thread(s))"
        )
    _say(f"wrote {args.out}")


def _finetune(args: argparse.Namespace) -> None:
    out = args.out or Path(args.dir) / "finetuned"
    history = workflow.finetune_dir(
        args.dir,
        out,
        config=_recipe(args),
        data=args.data,
        resume=args.resume,
        progress=args.progress,
        device=args.device,
    )
    last = history[-1]
    _say(
        f"fine-tuned for {last['epoch']} epochs: test accuracy {last['test_acc']:.2%}, "
        f"loss {last['test_loss']:.4f}; wrote {out}"
    )


def _eval(args: argparse.Namespace) -> None:
    scores = workflow.evaluate_dir(args.dir, data=args.data, device=args.device)
    print(f"accuracy      {scores['acc']:.2%}")
    print(f"loss          {scores['loss']:.4f}")
    print(f"MACs          {scores['macs']:,}")
    print(f"params        {scores['params']:,}")
    print(f"latency b=1   {1e3 * scores['latency_b1']:.3f} ms (CPU, median)")
    print(f"latency b=64  {1e3 * scores['latency_b64']:.3f} ms (CPU, median)")


def _compare(args: argparse.Namespace) -> None:
    config = CompareConfig(
        macs=args.macs,
        finetune=_recipe(args),
        methods=parse_methods(args.methods),
        prune=_selection(args),
        seed=args.seed,
    )
    comparison = workflow.compare_checkpoint(
        args.checkpoint,
        args.out,
        config=config,
        data=args.data,
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


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    common = _common()
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a zoo model",
        description="Train a zoo model with the paper's recipe (SGD Nesterov, "
        "cosine, label smoothing 0.1); checkpoints every epoch.",
    )
    p.add_argument("--model", required=True, help="zoo model name, e.g. digits_cnn, resnet20")
    p.add_argument("--data", required=True, help=f"data spec: {', '.join(SPECS)}")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
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
    p.add_argument("--checkpoint", required=True, help="folder written by `gfsprune train`")
    p.add_argument("--data", help=_data_help("the model"))
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--macs", type=float, help="keep this fraction of the MACs, in (0, 1)")
    target.add_argument("--params", type=float, help="keep this fraction of the parameters")
    target.add_argument(
        "--tolerance",
        type=float,
        help="per layer, add channels until the loss is within this relative "
        "increase of the layer's starting loss (the paper's rule)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seeds batches and candidates")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (without it, an existing "
        "progress.json is refused)",
    )
    _add_selection(p, greedy_only=False)
    p.set_defaults(handler=_prune, command_name="prune", distributed=True)

    p = sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a pruned model",
        description="Fine-tune the pruned model in DIR with the paper's recipe; "
        "checkpoints every epoch.",
    )
    p.add_argument("dir", type=Path, help="folder written by `gfsprune prune`")
    p.add_argument("--data", help=_data_help("the model"))
    p.add_argument("--out", type=Path, help="folder to write (default DIR/finetuned)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_recipe(p)
    p.set_defaults(handler=_finetune, command_name="finetune", distributed=True)

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate a trained or pruned model",
        description="Test accuracy and loss, MACs, parameters and measured CPU "
        "latency (median of 5 runs after 2 warm-ups) at batch 1 and 64.",
    )
    p.add_argument("dir", type=Path, help="folder written by train, prune or finetune")
    p.add_argument("--data", help=_data_help("the model"))
    p.set_defaults(handler=_eval, command_name="eval")

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="the paper's comparisons",
        description="Prune to greedy forward selection's per-layer widths by "
        "every method, fine-tune each the same way, write results.json, "
        "report.md and plots.",
    )
    p.add_argument("--checkpoint", required=True, help="folder written by `gfsprune train`")
    p.add_argument("--data", help=_data_help("the model"))
    p.add_argument("--macs", type=float, required=True, help="MACs ratio to keep, in (0, 1)")
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
    _add_selection(p, greedy_only=True)
    _add_recipe(p)
    p.set_defaults(handler=_compare, command_name="compare")

    p = sub.add_parser(
        "demo",
        help="train, prune and compare on digits (about 15 s on a CPU)",
        description="Train a small CNN on scikit-learn digits, compare every "
        "method at 50% MACs, print the table and write the report.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("gfsprune-demo"),
        help="output folder (default ./gfsprune-demo)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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


def default_threads() -> int:
    """torch's thread count, at most the CPU count less one (at least 1). On a 2-core machine
    whose other core is busy, torch's own default (2 threads) ran prune 8-20x slower than 1
    thread (oversubscription); larger machines keep torch's default."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


def _set_threads(threads: int | None) -> None:
    if threads is None:
        torch.set_num_threads(default_threads())
        return
    if threads < 1:
        raise ConfigError(f"--threads must be a positive integer. Got {threads}.")
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
    try:
        _set_threads(getattr(args, "threads", None))
        if getattr(args, "distributed", False):
            distributed.setup()  # joins the process group under torchrun, else does nothing
        return int(handler(args) or 0)
    except GfsPruneError as err:
        message = " ".join(line.strip() for line in str(err).splitlines())
        print(f"gfsprune {args.command_name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run it again with --resume to continue" if hasattr(args, "resume") else ""
        print(f"gfsprune {args.command_name}: interrupted{hint}.", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
