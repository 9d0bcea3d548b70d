"""Where a pruned model's time goes: MACs and measured milliseconds per named module (e.g. a
ResNet's stages) of the unpruned model and of pruned models saved by ``gfsprune.save``
(issue 14).

A MACs budget treats every multiply-accumulate alike, but a MAC in a narrow layer on a large
feature map costs more time than one in a wide layer on a small map. This prints, per model
and module, the module's MACs per sample (``torch.utils.flop_counter``), the median time
spent in it during whole forward passes at the batch size (timed by forward hooks) and the
two's ratio, the models timed in turns after warm-up rounds as ``round_to.py`` times them.
``round_to.py --save DIR`` keeps the models it compares.

    .venv/bin/python benchmarks/round_to.py --models resnet56 --ratios 0.5 --save runs/rt
    .venv/bin/python benchmarks/module_times.py resnet56 --modules stages.0 stages.1 stages.2 \\
        --folders r1=runs/rt/resnet56-0.5/r1 r8=runs/rt/resnet56-0.5/r8
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from round_to import WARMUP, in_turns
from torch import nn

import gfsprune
from gfsprune import load, models
from gfsprune.core.counting import count_flops
from gfsprune.workflow.latency import synchronize


def module_macs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, float]:
    """MACs of one forward of ``model`` on ``x`` inside each named submodule."""
    counts = count_flops(model, x).get_flop_counts()
    root = type(model).__name__
    return {name: sum(counts.get(f"{root}.{name}", {}).values()) / 2 for name in names}


def module_seconds(
    variants: dict[str, nn.Module], x: torch.Tensor, names: list[str], rounds: int
) -> dict[str, dict[str, float]]:
    """Per variant and named submodule (each running once per forward), the median seconds
    spent in it per forward."""
    spent: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in variants}
    hooks, started = [], {}
    for variant, model in variants.items():
        for name in names:
            module = model.get_submodule(name)

            def before(_module, _inputs, key=(variant, name)):
                synchronize(x.device)
                started[key] = time.perf_counter()

            def after(_module, _inputs, _output, key=(variant, name)):
                synchronize(x.device)
                spent[key[0]][key[1]].append(time.perf_counter() - started[key])

            hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        in_turns({v: (m, x) for v, m in variants.items()}, rounds)
    finally:
        for hook in hooks:
            hook.remove()
    # the warm-up rounds ran the hooks too: drop them
    return {
        v: {n: statistics.median(t[WARMUP:]) for n, t in per.items()} for v, per in spent.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the unpruned model's spec (random weights)")
    parser.add_argument("--size", type=int, default=32, help="input side")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--folders", nargs="+", default=[], metavar="NAME=DIR", help="pruned models to compare"
    )
    parser.add_argument("--modules", nargs="+", required=True, help="submodule names")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = models.get(args.model, num_classes=args.num_classes, image_size=args.size).eval()
    variants = {"full": base}
    for entry in args.folders:
        name, sep, folder = entry.partition("=")
        if not sep:
            parser.error(f"--folders takes NAME=DIR; got {entry!r}")
        variants[name] = load(folder, base)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    variants = {n: m.to(args.device, memory_format=layout).eval() for n, m in variants.items()}
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    x = x.contiguous(memory_format=layout)
    seconds = module_seconds(variants, x, args.modules, args.rounds)
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"gfsprune {gfsprune.__version__}, {args.threads} thread(s), {args.device}"
        f"{', channels-last' if args.channels_last else ''}, batch {args.batch}, "
        f"{args.rounds} rounds"
    )
    print(f"| model | module | MMACs per sample | ms at batch {args.batch} | ms per GMAC |")
    print("|---|---|---|---|---|")
    for variant, model in variants.items():
        macs = module_macs(model, x[:1], args.modules)
        for name in args.modules:
            ms = 1e3 * seconds[variant][name]
            per = f"{ms / (macs[name] * args.batch / 1e9):.1f}" if macs[name] else ""
            print(f"| {variant} | {name} | {macs[name] / 1e6:.2f} | {ms:.2f} | {per} |")


if __name__ == "__main__":
    main()
