"""MACs ratio against measured speed-up, with and without ``round_to=8`` (issue 14).

For every model and MACs budget the model (random weights: latency does not depend on them) is
pruned with the same selection settings once with ``round_to=1`` and once for each
``--round-to`` value (8 by default: every pruned width a multiple of 8) and saved; then the
unpruned model and the pruned ones are timed on the CPU (or ``--device``, e.g. a GPU; in
channels-last memory with ``--channels-last``) at batch 1 and batch 64. The models
are timed in turns, one forward each per round (each round starting one model later), after
warm-up rounds, so that a change of machine load during the run touches all of them alike,
and the rounded models are compared with ``round_to=1`` round by round (the median of the
per-round ratios). The timing is repeated in ``--processes`` fresh processes, one after
another, each loading the saved models anew: where a model's tensors land in memory moves
its speed by several percent for a whole process, so a single process's ratio, however many
rounds, can be off by that much. The table gives the median over the processes (of each
one's median) and, for the ratios, their range. Which channels are kept does not change the
latency, only how many, so selection uses the cheapest setting (one random candidate per
step, two random batches, by the network loss); the widths come from the ``curves``
allocator (gfsprune's default until 0.1.0) unless ``--allocator`` names another.

    .venv/bin/python benchmarks/round_to.py                    # the default models, 1 thread
    .venv/bin/python benchmarks/round_to.py --models resnet20 torchvision:resnet18 --size 112
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time

import torch
from torch import nn

import gfsprune
from gfsprune import Macs, PruneConfig, PruneResult, load, models, prune, save
from gfsprune.errors import ConfigError
from gfsprune.workflow.latency import synchronize

# (spec, input side) of the default models: two zoo CIFAR-shape networks and two torchvision
# ImageNet networks at a reduced input.
_DEFAULT_MODELS = (
    ("resnet56", 32),
    ("mobilenet_v2", 32),
    ("torchvision:resnet18", 112),
    ("torchvision:mobilenet_v3_large", 112),
)


#: Rounds run before the timed ones (their times are not kept).
WARMUP = 2


def in_turns(
    cases: dict[str, tuple[nn.Module, torch.Tensor]], rounds: int
) -> dict[str, list[float]]:
    """Seconds of one forward per case (a module and its input) and round, after
    :data:`WARMUP` rounds, the cases timed in turns, each round starting one case later (so
    that none always runs right after the same one); on a GPU each forward is waited for."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    with torch.inference_mode():
        for step in range(rounds + WARMUP):
            turn = step % len(names)
            for name in names[turn:] + names[:turn]:
                module, x = cases[name]
                synchronize(x.device)
                start = time.perf_counter()
                module(x)
                synchronize(x.device)
                if step >= WARMUP:
                    times[name].append(time.perf_counter() - start)
    return times


def _median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free ``level`` interval for it (the order
    statistics whose binomial tail probabilities bracket it)."""
    ordered, n = sorted(values), len(values)
    tail, k = 0.0, 0
    while k < n // 2 and tail + math.comb(n, k) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    # k order statistics lie below the interval: it runs from the k+1-th to the n-k-th
    low, high = (ordered[0], ordered[-1]) if k == 0 else (ordered[k], ordered[n - k - 1])
    return statistics.median(values), low, high


def _prune(
    model: nn.Module, side: int, ratio: float, round_to: int, seed: int, allocator: str
) -> PruneResult:
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(16, 3, side, side, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(2)
    ]
    options = {"allocator": allocator}
    config = PruneConfig(objective="loss", candidates=1, seed=seed, round_to=round_to, **options)
    return prune(model, data, data[0][0][:1], target=Macs(ratio), config=config, progress=False)


def _pruned(
    base: nn.Module,
    side: int,
    ratio: float,
    round_tos: tuple[int, ...],
    args: argparse.Namespace,
    folder: str,
) -> tuple[dict[str, float], dict[str, str], dict[int, str]]:
    """Prune ``base`` at each rounding and save it under ``folder``: ``(MACs ratio per
    variant, folder per variant, the error per refused rounding)``."""
    macs, folders, refused = {"full": 1.0}, {}, {}
    for round_to in round_tos:
        try:
            result = _prune(base, side, ratio, round_to, args.seed, args.allocator)
        except ConfigError as err:  # e.g. the budget is out of reach at this rounding
            refused[round_to] = str(err)
            continue
        macs[f"r{round_to}"] = result.macs_after / result.macs_before
        folders[f"r{round_to}"] = str(save(result, os.path.join(folder, f"r{round_to}")))
    return macs, folders, refused


def _measure(
    spec: str, side: int, folders: dict[str, str], args: argparse.Namespace
) -> dict[int, dict[str, list[float]]]:
    """Build the full model, load the pruned ones saved in ``folders`` (variant name ->
    folder) and time them all on ``args.device`` (channels-last where asked): per batch
    size the seconds per variant and round."""
    torch.set_num_threads(args.threads)
    base = models.get(spec, num_classes=10, image_size=side).eval()
    variants = {"full": base} | {name: load(f, base) for name, f in folders.items()}
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    variants = {n: m.to(args.device, memory_format=layout) for n, m in variants.items()}
    times = {}
    for batch in (1, 64):
        x = torch.randn(batch, 3, side, side, device=args.device)
        x = x.contiguous(memory_format=layout)
        times[batch] = in_turns({name: (m, x) for name, m in variants.items()}, args.rounds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model specs (default: four models)")
    parser.add_argument("--size", type=int, help="input side for --models (default: 32)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per batch size")
    parser.add_argument(
        "--processes", type=int, default=3, help="fresh processes per case, one after another"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where to time (e.g. cuda)")
    parser.add_argument(
        "--channels-last", action="store_true", help="time models and inputs in channels-last"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--round-to", type=int, nargs="+", default=[8], help="compared with round_to=1"
    )
    parser.add_argument(
        "--allocator", choices=("curves", "uniform"), default="curves", help="the widths"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--save", metavar="DIR", help="keep the pruned models in DIR/MODEL-RATIO/rN (new folders)"
    )
    args = parser.parse_args()
    cases = [(m, args.size or 32) for m in args.models] if args.models else _DEFAULT_MODELS
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"gfsprune {gfsprune.__version__}, {args.threads} thread(s), {args.device}"
        f"{', channels-last' if args.channels_last else ''}, "
        f"allocator {args.allocator}, {args.rounds} rounds in each "
        f"of {args.processes} processes"
    )
    print(
        "| model | input | MACs target | round_to | MACs ratio | b=1 ms | speed-up b=1 "
        "| b=64 ms | speed-up b=64 | against round_to=1, b=1 | b=64 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    round_tos = (1, *args.round_to)
    torch.set_num_threads(args.threads)
    # pruned once per case and saved; timed in a fresh process for every repeat (one at a
    # time), each loading its models anew: where a model's tensors land in memory shifts its
    # speed by several percent for the life of a process
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for spec, side in cases:
            torch.manual_seed(args.seed)
            base = models.get(spec, num_classes=10, image_size=side).eval()
            for ratio in args.ratios:
                keep = args.save and os.path.join(args.save, f"{spec.replace(':', '-')}-{ratio}")
                with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory() as tmp:
                    macs, folders, refused = _pruned(base, side, ratio, round_tos, args, tmp)
                    task = (spec, side, folders, args)
                    runs = [pool.apply(_measure, task) for _ in range(args.processes)]
                for round_to, err in refused.items():
                    case = {"model": spec, "input": side, "target": ratio, "round_to": round_to}
                    rows.append({**case, "refused": err})
                    print(f"| {spec} | {side} | {ratio:.0%} | {round_to} | refused: {err} |")
                if "r1" in macs:  # the reference every rounding is compared with
                    rows += _report(spec, side, ratio, macs, runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def _report(
    spec: str,
    side: int,
    ratio: float,
    macs: dict[str, float],
    runs: list[dict[int, dict[str, list[float]]]],
) -> list[dict]:
    """Print and return a row per pruned variant: milliseconds (the median over processes
    of each process's median), speed-ups over the full model, and the paired ratio against
    ``round_to=1`` (each process's median per-round ratio; the median over processes with
    their range, or with a 95% interval over the rounds when there is one process)."""
    rows = []
    ms = {
        b: {n: 1e3 * statistics.median(statistics.median(t[b][n]) for t in runs) for n in macs}
        for b in (1, 64)
    }
    for name in [n for n in macs if n != "full"]:
        # per round, round_to=1's time over this variant's: > 1 means this one is faster
        paired = {}
        for b in (1, 64):
            per_round = [[a / c for a, c in zip(t[b]["r1"], t[b][name], strict=True)] for t in runs]
            if len(runs) == 1:
                paired[b] = _median_interval(per_round[0])
            else:
                each = [statistics.median(r) for r in per_round]
                paired[b] = statistics.median(each), min(each), max(each)
        row = {
            "model": spec,
            "input": side,
            "target": ratio,
            "round_to": int(name[1:]),
            "macs_ratio": macs[name],
            **{f"speedup_b{b}": ms[b]["full"] / ms[b][name] for b in (1, 64)},
            **{f"ms_b{b}": ms[b][name] for b in (1, 64)},
            **{f"full_ms_b{b}": ms[b]["full"] for b in (1, 64)},
            **{f"vs_r1_b{b}": list(paired[b]) for b in (1, 64)},
            "processes": len(runs),
        }
        rows.append(row)
        versus = " | ".join(
            "" if name == "r1" else f"{m:.3f}x [{lo:.3f}, {hi:.3f}]"
            for m, lo, hi in (paired[1], paired[64])
        )
        print(
            f"| {spec} | {side} | {ratio:.0%} | {row['round_to']} | "
            f"{row['macs_ratio']:.3f} | {row['ms_b1']:.2f} | {row['speedup_b1']:.2f}x "
            f"| {row['ms_b64']:.1f} | {row['speedup_b64']:.2f}x | {versus} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
