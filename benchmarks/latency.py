"""Latency budgets against measured speed-up, and against MACs budgets at the same latency
(issue 27).

For every model, batch size and ratio the model (random weights) is pruned to
``Latency(ratio, batch=b)``: its cost model times the model's pieces on this device (cached
on disk, ``$GFSPRUNE_CACHE_DIR``) and the allocator fills the latency budget. Then a ``Macs``
budget is searched for whose pruned model the same cost model predicts as fast (a few prunes,
each MACs ratio corrected by the predicted latency's miss), so that the two are compared at
the same latency. Selection draws random images labelled by the unpruned model's own
predictions (agreement is what it keeps); "agreement" is the share of 512 held-out random
images on which a pruned model's top-1 class is the unpruned model's, "output error" the
distance of its outputs to the unpruned model's relative to their norm.

Both pruned models are saved and timed with the unpruned one as ``round_to.py`` times its
models: in turns, one forward each per round after warm-up rounds, in ``--processes`` fresh
processes one after another, at batch 1 and 64. "latency" is a pruned model's time over the
unpruned model's, round by round (the median of the per-round ratios; with one process a
95% interval over the rounds, with several the median over the processes with their range);
"speed-up" is its inverse; "pred. error" is the cost model's predicted seconds over the
measured median, minus one. Before the cases of a model and batch size, the cost model is
also checked on ``--random-widths`` copies pruned to random widths (timed in turns with the
unpruned model in the main process).

    .venv/bin/python benchmarks/latency.py                       # the issue's models
    .venv/bin/python benchmarks/latency.py --models resnet20 --size 32 --batches 1 \\
        --ratios 0.7 --rounds 3 --processes 1 --candidates 1 --allocator uniform  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile

import numpy as np
import torch
from round_to import _DEFAULT_MODELS, _measure, _median_interval, in_turns
from torch import nn

import gfsprune
from gfsprune import Latency, Macs, PruneConfig, PruneResult, models, prune, save
from gfsprune.core.latency_cost import LatencyCost, _spread
from gfsprune.errors import ConfigError
from gfsprune.surgery import find_layers, prune_channels, removable_layers

#: How close (relative) the matched MACs model's predicted latency must come to the
#: latency model's before the search stops.
_MATCH = 0.02


def _data(base: nn.Module, side: int, seed: int, batches: int) -> list[tuple]:
    """Random images labelled with ``base``'s predictions."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(32, 3, side, side, generator=g) for _ in range(batches)]
    with torch.no_grad():
        return [(x, base(x).argmax(1)) for x in images]


def _fidelity(model: nn.Module, base: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """The share of ``images`` on which ``model``'s top-1 class is ``base``'s, and the
    relative distance of its outputs to ``base``'s."""
    with torch.no_grad():
        got, wanted = model(images), base(images)
    agreement = float((got.argmax(1) == wanted.argmax(1)).float().mean())
    return agreement, float((got - wanted).norm() / wanted.norm())


def _prune(base, side, target, args) -> PruneResult:
    options = {} if args.allocator is None else {"allocator": args.allocator}
    config = PruneConfig(candidates=args.candidates, seed=args.seed, device=args.device, **options)
    data = _data(base, side, args.seed, args.data_batches)
    example = data[0][0][:1]
    return prune(base, data, example, target=target, config=config, progress=False)


def _matched_macs(base, side, cost: LatencyCost, wanted: float, start: float, args):
    """A ``Macs`` pruning whose predicted latency is within :data:`_MATCH` of ``wanted``
    seconds (or the closest of ``args.match_steps`` tries), starting at MACs ratio
    ``start``: ``(result, predicted seconds)``."""
    best, ratio = None, start
    for _ in range(args.match_steps):
        try:
            result = _prune(base, side, Macs(min(max(ratio, 0.01), 0.99)), args)
        except ConfigError:
            break
        seconds = cost.predict_model(result.model)
        if best is None or abs(seconds / wanted - 1) < abs(best[1] / wanted - 1):
            best = result, seconds
        if abs(seconds / wanted - 1) < _MATCH:
            break
        # the time saved taken as proportional to the MACs removed
        saved, full = cost.full_seconds - seconds, cost.full_seconds
        ratio = 1 - (1 - ratio) * (full - wanted) / saved if saved > 0 else ratio - 0.1
    return best


def _cost(spec: str, side: int, batch: int, args) -> tuple[nn.Module, list, LatencyCost]:
    """The unpruned model (random weights, seeded), its channel layers and its latency cost
    model at ``batch`` (as ``prune`` builds them)."""
    torch.manual_seed(args.seed)
    base = models.get(spec, num_classes=10, image_size=side).eval()
    example = torch.randn(1, 3, side, side)
    layers, _ = find_layers(base, example)
    layers, _ = removable_layers(base, example, layers, seed=args.seed)
    cost = LatencyCost(base, example, layers, batch=batch, channels_last=args.channels_last)
    return base, layers, cost


def _random_widths(spec: str, side: int, batch: int, args) -> dict:
    """The cost model's error on ``args.random_widths`` copies pruned to random widths
    (every layer a uniform share in [0.2, 1] of its items), timed in turns with the unpruned
    model in this process: the median predicted over measured seconds, minus one, each."""
    base, layers, cost = _cost(spec, side, batch, args)
    rng = np.random.default_rng(args.seed)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=layout)
    cases, predicted = {"full": (base.to(memory_format=layout), x)}, {}
    for k in range(args.random_widths):
        kept = {}
        for layer in layers:
            share = rng.uniform(0.2, 1.0)
            kept[layer.name] = _spread(layer, share)
        model = prune_channels(base, x[:1], kept, layers=layers).eval()
        predicted[f"w{k}"] = cost.predict_model(model)
        cases[f"w{k}"] = (model.to(memory_format=layout), x)
    times = in_turns(cases, args.rounds)
    errors = [predicted[n] / statistics.median(times[n]) - 1 for n in predicted]
    print(
        f"random widths, {spec} {side} batch {batch}: prediction errors "
        f"{', '.join(f'{e:+.1%}' for e in errors)}",
        flush=True,
    )
    return {"model": spec, "input": side, "batch": batch, "random_width_errors": errors}


def _case(spec, side, batch, ratio, args, pool) -> list[dict]:
    base, _, cost = _cost(spec, side, batch, args)
    case = {"model": spec, "input": side, "batch": batch, "target": ratio}
    try:
        latency = _prune(
            base, side, Latency(ratio, batch=batch, channels_last=args.channels_last), args
        )
    except ConfigError as err:
        print(f"| {spec} | {side} | {batch} | Latency({ratio}) | refused: {err} |", flush=True)
        return [{**case, "refused": str(err)}]
    predicted = {"latency": cost.predict_model(latency.model)}
    pruned = {"latency": latency}
    matched = _matched_macs(base, side, cost, predicted["latency"], latency.macs_ratio, args)
    if matched is not None:
        pruned["macs"], predicted["macs"] = matched
    test = torch.randn(512, 3, side, side, generator=torch.Generator().manual_seed(10_000))
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: str(save(r, os.path.join(tmp, n))) for n, r in pruned.items()}
        runs = [pool.apply(_measure, (spec, side, folders, args)) for _ in range(args.processes)]
    rows = []
    for name, result in pruned.items():
        per_round = [
            [p / f for p, f in zip(t[batch][name], t[batch]["full"], strict=True)] for t in runs
        ]
        if len(runs) == 1:
            ratio_measured, low, high = _median_interval(per_round[0])
        else:
            each = [statistics.median(r) for r in per_round]
            ratio_measured, low, high = statistics.median(each), min(each), max(each)
        seconds = statistics.median(statistics.median(t[batch][name]) for t in runs)
        fields = ("agreement", "output_error")
        row = {
            **case,
            "budget": f"Latency({ratio})"
            if name == "latency"
            else f"Macs({result.macs_ratio:.3f})",
            "macs_ratio": result.macs_ratio,
            "predicted_ratio": predicted[name] / cost.full_seconds,
            "latency_ratio": [ratio_measured, low, high],
            "speedup": [1 / ratio_measured, 1 / high, 1 / low],
            "ms": 1e3 * seconds,
            "full_ms": 1e3 * statistics.median(statistics.median(t[batch]["full"]) for t in runs),
            "prediction_error": predicted[name] / seconds - 1,
            **dict(zip(fields, _fidelity(result.model, base, test), strict=True)),
            "processes": len(runs),
        }
        rows.append(row)
        print(
            f"| {spec} | {side} | {batch} | {row['budget']} | {row['macs_ratio']:.3f} | "
            f"{row['predicted_ratio']:.3f} | {ratio_measured:.3f} [{low:.3f}, {high:.3f}] | "
            f"{row['speedup'][0]:.2f}x | {row['full_ms']:.2f} / {row['ms']:.2f} | "
            f"{row['prediction_error']:+.1%} | {row['agreement']:.1%} | "
            f"{row['output_error']:.3f} |",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model specs (default: four models)")
    parser.add_argument("--size", type=int, help="input side for --models (default: 32)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], choices=(1, 64))
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per batch size")
    parser.add_argument("--processes", type=int, default=3, help="fresh timing processes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where to prune and time (e.g. cuda)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=4, help="candidates per step")
    parser.add_argument("--data-batches", type=int, default=8, help="selection batches of 32")
    parser.add_argument("--allocator", choices=("curves", "uniform"))
    parser.add_argument("--match-steps", type=int, default=4, help="Macs prunes, at most")
    parser.add_argument(
        "--random-widths", type=int, default=3, help="random-width models to check predictions on"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    cases = [(m, args.size or 32) for m in args.models] if args.models else _DEFAULT_MODELS
    torch.set_num_threads(args.threads)
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"gfsprune {gfsprune.__version__}, {args.threads} thread(s), {args.device}"
        f"{', channels-last' if args.channels_last else ''}, allocator "
        f"{args.allocator or PruneConfig().allocator}, {args.candidates} candidates, "
        f"{args.rounds} rounds in each of {args.processes} processes"
    )
    print(
        "| model | input | batch | budget | MACs ratio | predicted latency | measured latency "
        "[95%] | speed-up | ms full / pruned | pred. error | agreement | output error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for spec, side in cases:
            for batch in args.batches:
                if args.random_widths:
                    rows.append(_random_widths(spec, side, batch, args))
                for ratio in args.ratios:
                    rows += _case(spec, side, batch, ratio, args, pool)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
