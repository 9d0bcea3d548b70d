"""Selection speed: the naive evaluator (one full forward per candidate, as the official code)
against the default batched, prefix-cached one, on the same model, data and seed.

resnet20 runs the whole selection to Macs(0.5). A full naive run on mobilenet_v2 would take
hours on a CPU (thousands of picks, 50 full forward passes each), so by default it keeps
``--picks`` channels in every layer (``Widths``): every layer, hence every prefix depth, is
still exercised with 50 candidates per step.

For each model it prints the wall time of both, the speed-up, whether the plans are identical
(same picks in the same order), and the achieved rate of the fast selection (candidate
evaluations x batch images per second) as a fraction of the plain batched forward rate of the
same network on the same machine (the practical limit: no selection can score candidates
faster than it can run the network on them).

    python benchmarks/selection_speed.py            # resnet20 and mobilenet_v2, full runs
    python benchmarks/selection_speed.py --json     # the dict recorded in docs/RESULTS.md
    python benchmarks/selection_speed.py --device cuda
    python benchmarks/selection_speed.py --models resnet20 --per-layer   # ms per candidate

``--per-layer`` times one greedy step in every layer instead (both evaluators, the same
candidates: three channels kept plus one each), to show where the time goes.

``--schedules`` times pruning to ``Macs(--macs)`` by the exact schedule, the fast ones
(``--variants``, ``Fast()`` by default; all with ``uniform`` widths, so that only the
schedule differs) and
Torch-Pruning's magnitude pruner (L1, every layer alike, its ratio bisected to the same
MACs) side by side, with the loss right after pruning: the
cross-entropy against the unpruned model's own predictions on held-out batches (the weights
are random, so the data's labels would mean nothing). ``--estimate-exact`` replaces the exact
run by a measured estimate where it would take hours: per layer, the seconds of a few exact
steps at half the layer's planned width times its number of steps.

``--scaling`` times the exact and fast schedules (``uniform`` widths) on resnet20 at width
multipliers 0.5, 1, 2 and 4 (``--multipliers``) and plots seconds against the total channel
count, log-log (``--plot FILE``), beside the reference "layers x one forward pass"; exact
runs in full up to ``--measure-exact-to`` (default 1) and is estimated at every width.

    python benchmarks/selection_speed.py --schedules --models resnet20-32,resnet18-64
    python benchmarks/selection_speed.py --scaling --plot scaling.png
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
import torch_pruning as tp

import gfsprune
from gfsprune import Macs, PruneConfig, Widths, count, models, prune
from gfsprune.core.schedules import Fast
from gfsprune.scoring import EVALUATORS, make_evaluator
from gfsprune.surgery import Masks, build_graph, find_layers
from gfsprune.workflow.latency import measure_latency

# name -> (constructor options, input shape (C, H, W), picks per layer or None for Macs)
MODELS = {
    "resnet20": ({"num_classes": 10}, (3, 32, 32), None),
    "mobilenet_v2": ({"num_classes": 10, "small_input": True}, (3, 32, 32), 4),
}


# --schedules: key -> (model spec, constructor options, input side)
SPEED_MODELS = {
    "resnet20-32": ("resnet20", {"num_classes": 10}, 32),
    "resnet56-32": ("resnet56", {"num_classes": 10}, 32),
    "resnet18-64": ("torchvision:resnet18", {"num_classes": 10}, 64),
    "mobilenet_v3_large-64": ("torchvision:mobilenet_v3_large", {"num_classes": 10}, 64),
    "resnet18-224": ("torchvision:resnet18", {"num_classes": 10}, 224),
    "mobilenet_v3_large-224": ("torchvision:mobilenet_v3_large", {"num_classes": 10}, 224),
}


def _labelled_by(model, shape, batch: int, batches: int, seed: int):
    """Random inputs labelled by ``model``'s own argmax."""
    g = torch.Generator().manual_seed(seed)
    data = []
    with torch.no_grad():  # not inference mode: the batches are traced through autograd
        for _ in range(batches):
            x = torch.randn(batch, *shape, generator=g)
            data.append((x, model(x).argmax(1)))
    return data


def _held_out_loss(model, batches) -> float:
    with torch.inference_mode():
        losses = [float(torch.nn.functional.cross_entropy(model(x), y)) for x, y in batches]
    return sum(losses) / len(losses)


def _exact_estimate(model, data, example, ratio: float, candidates: int, steps: int) -> dict:
    """Seconds the exact schedule would take: per layer, ``steps`` exact steps timed at half
    its planned width, times the layer's planned number of steps (each step scores
    ``min(candidates, width - kept)`` candidates, so the timed steps' candidate count is
    scaled to the layer's mean)."""
    from gfsprune.core.allocate import Uniform
    from gfsprune.core.compute_cost import ComputeCost

    layers, _ = find_layers(model, example)
    widths = Uniform().allocate(ComputeCost(model, example, layers), Macs(ratio), {})
    graph = build_graph(model, example)
    loss = torch.nn.functional.cross_entropy
    total = 0.0
    with Masks(model, layers) as masks:
        evaluator = make_evaluator(EVALUATORS["batched"], model, masks, loss, graph=graph)
        for layer, width in zip(layers, widths, strict=True):
            kept = width // 2
            k = min(candidates, layer.width - kept)
            keep = torch.zeros(k, layer.width)
            keep[:, :kept] = layer.width / (kept + 1)
            keep[range(k), range(kept, kept + k)] = layer.width / (kept + 1)
            x, y = data[0]
            evaluator(x, y, layer, keep[:2])  # warm-up, records the prefix
            start = time.perf_counter()
            for step in range(steps):
                x, y = data[step % len(data)]
                evaluator(x, y, layer, keep)
            per_candidate = (time.perf_counter() - start) / (steps * k)
            evaluations = sum(min(candidates, layer.width - i) for i in range(width))
            total += per_candidate * evaluations
    return {"seconds": round(total, 1), "estimated": True}


def _tp_magnitude(model, example, ratio: float) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning's magnitude pruner (L1, the same share of every layer) at the ratio
    bisected to ``ratio`` of the MACs; the classifier is left whole, as gfsprune leaves it."""
    from gfsprune.workflow.methods import match_macs

    def prune_at(share: float) -> torch.nn.Module:
        trial = copy.deepcopy(model)
        last = [m for m in trial.modules() if isinstance(m, torch.nn.Linear)][-1:]
        tp.pruner.MagnitudePruner(
            trial,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=share,
            ignored_layers=last,
        ).step()
        return trial

    start = time.perf_counter()
    matched = match_macs(prune_at, example, macs=count(model, example)[0], target=ratio)
    return matched.model, time.perf_counter() - start


def time_schedules(
    key: str,
    *,
    batch: int,
    ratio: float,
    estimate_exact: bool,
    variants: dict[str, dict] | None = None,
    seed: int = 0,
) -> dict:
    """Time-to-prune and loss right after pruning: exact, the fast ``variants`` (name:
    ``Fast`` options; default ``Fast()`` as "fast") and Torch-Pruning."""
    variants = {"fast": {}} if variants is None else variants
    spec, options, side = SPEED_MODELS[key]
    torch.manual_seed(seed)
    model = models.get(spec, **options).eval()
    shape = (3, side, side)
    data = _labelled_by(model, shape, batch, 8, seed)
    held_out = _labelled_by(model, shape, batch, 2, seed + 1)
    example = data[0][0][:1]
    row: dict = {"model": key, "full_loss": round(_held_out_loss(model, held_out), 4)}
    for name in ("exact", *variants):
        schedule = Fast(**variants[name]) if name in variants else "exact"
        config = PruneConfig(objective="loss", schedule=schedule, allocator="uniform")
        if name == "exact" and estimate_exact:
            row[name] = _exact_estimate(model, data, example, ratio, config.candidates, steps=3)
            continue
        start = time.perf_counter()
        result = prune(model, data, example, target=Macs(ratio), config=config, progress=False)
        row[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "loss": round(_held_out_loss(result.model, held_out), 4),
            "macs_ratio": round(result.macs_ratio, 4),
        }
    pruned, seconds = _tp_magnitude(model, example, ratio)
    row["tp-l1"] = {
        "seconds": round(seconds, 1),
        "loss": round(_held_out_loss(pruned, held_out), 4),
        "macs_ratio": round(count(pruned, example)[0] / count(model, example)[0], 4),
    }
    for name, options in variants.items():
        row[name]["options"] = options
        row[name]["speedup"] = round(row["exact"]["seconds"] / row[name]["seconds"], 1)
    return row


def scaling(
    multipliers: list[float], *, batch: int, ratio: float, measure_exact_to: float
) -> list[dict]:
    """Selection seconds of the exact and fast schedules on resnet20 (3x32x32) at each
    width multiplier, with the total channel count of its channel layers and the reference
    cost "layers x one forward pass of the batch". Exact is run in full up to
    ``measure_exact_to`` and estimated (``_exact_estimate``) at every multiplier, so that the
    estimate can be checked where both exist."""
    rows = []
    for mult in multipliers:
        torch.manual_seed(0)
        model = models.get("resnet20", num_classes=10, width_mult=mult).eval()
        data = _labelled_by(model, (3, 32, 32), batch, 8, 0)
        example = data[0][0][:1]
        layers, _ = find_layers(model, example)
        forward_s = measure_latency(model, (3, 32, 32), batch)
        row = {
            "width_mult": mult,
            "macs": ratio,
            "channels": sum(layer.width for layer in layers),
            "layers": len(layers),
            "forward_s": round(forward_s, 4),
            "layers_x_forward_s": round(len(layers) * forward_s, 2),
        }
        candidates = PruneConfig().candidates
        estimate = _exact_estimate(model, data, example, ratio, candidates, steps=3)
        row["exact_estimate_s"] = estimate["seconds"]
        for name in ("exact", "fast"):
            if name == "exact" and mult > measure_exact_to:
                continue
            config = PruneConfig(objective="loss", schedule=name, allocator="uniform")
            start = time.perf_counter()
            prune(model, data, example, target=Macs(ratio), config=config, progress=False)
            row[f"{name}_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plot_scaling(rows: list[dict], path: str) -> None:
    """Log-log seconds against channels: exact (measured, and estimated where not run), fast,
    and the reference "layers x forward pass" scaled to meet fast at the narrowest width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    channels = [r["channels"] for r in rows]
    measured = [(r["channels"], r["exact_s"]) for r in rows if "exact_s" in r]
    if measured:
        ax.loglog(*zip(*measured, strict=True), "o-", color="C0", label="exact (measured)")
    ax.loglog(
        channels,
        [r["exact_estimate_s"] for r in rows],
        "o--",
        mfc="none",
        color="C0",
        label="exact (estimated)",
    )
    ax.loglog(channels, [r["fast_s"] for r in rows], "s-", color="C1", label="fast")
    scale = rows[0]["fast_s"] / rows[0]["layers_x_forward_s"]
    ax.loglog(
        channels,
        [scale * r["layers_x_forward_s"] for r in rows],
        ":",
        color="gray",
        label="layers x forward pass (scaled)",
    )
    ax.set_xlabel("channels in the pruned layers (resnet20 x width multiplier)")
    ax.set_ylabel("selection seconds")
    ax.set_title(f"Selection time against width, Macs({rows[0]['macs']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _data(shape, batch: int, batches: int, device: str):
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch, *shape, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
        )
        for _ in range(batches)
    ]


def _model(name: str, device: str) -> torch.nn.Module:
    """The zoo model ``name`` with seed-0 weights, in eval mode on ``device``."""
    torch.manual_seed(0)
    return models.get(name, **MODELS[name][0]).to(device).eval()


def _forward_rate(model, shape, batch: int, device: str, repeats: int = 5) -> float:
    """Images per second of a plain forward pass, best over a few batch sizes."""
    best = 0.0
    for size in (batch, batch * 8):
        x = torch.randn(size, *shape, device=device)
        with torch.inference_mode():
            model(x)  # warm-up
            times = []
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        best = max(best, size / min(times))
    return best


def measure(
    name: str, *, batch: int, candidates: int, ratio: float, device: str, picks: int | None
) -> dict:
    _, shape, default_picks = MODELS[name]
    picks = default_picks if picks is None else picks or None
    model = _model(name, device)
    data = _data(shape, batch, 4, device)
    example = data[0][0][:1]
    target = Macs(ratio)
    if picks is not None:
        layers, _ = find_layers(model, example)
        target = Widths({layer.name: min(picks, layer.width) for layer in layers})
    runs = {}
    for evaluator in ("naive", "batched"):
        start = time.perf_counter()
        result = prune(
            model,
            data,
            example,
            target=target,
            progress=False,
            config=PruneConfig(
                objective="loss",
                allocator="curves",
                candidates=candidates,
                evaluator=evaluator,
                device=device,
            ),
        )
        runs[evaluator] = (time.perf_counter() - start, result)
    (naive_s, naive), (fast_s, fast) = runs["naive"], runs["batched"]
    identical = [p.kept for p in naive.plan] == [p.kept for p in fast.plan]
    evaluations = sum(min(candidates, p.width - i) for p in fast.plan for i in range(len(p.kept)))
    achieved = evaluations * batch / fast_s
    limit = _forward_rate(model, shape, batch, device)
    return {
        "naive_s": round(naive_s, 2),
        "fast_s": round(fast_s, 2),
        "speedup": round(naive_s / fast_s, 2),
        "identical": identical,
        "limit_fraction": round(achieved / limit, 3),
        "evaluations": evaluations,
        "achieved_images_per_s": round(achieved),
        "forward_images_per_s": round(limit),
        "macs_ratio": round(fast.macs_ratio, 4),
        "target": repr(target) if picks is None else f"{picks} picks per layer",
    }


def per_layer(name: str, *, batch: int, candidates: int, device: str) -> list[dict]:
    """Milliseconds per candidate of one step in each layer, naive and fast."""
    shape = MODELS[name][1]
    model = _model(name, device)
    inputs, targets = _data(shape, batch, 1, device)[0]
    layers, _ = find_layers(model, inputs[:1])
    graph = build_graph(model, inputs[:1])
    rows = []
    with Masks(model, layers) as masks:
        evaluators = {
            e: make_evaluator(
                EVALUATORS[e], model, masks, torch.nn.functional.cross_entropy, graph=graph
            )
            for e in ("naive", "batched")
        }
        for layer in layers:
            k = min(candidates, layer.width - 3)
            keep = torch.zeros(k, layer.width)
            keep[:, :3] = 1.0
            keep[range(k), range(3, 3 + k)] = 1.0
            row = {"layer": layer.name, "width": layer.width, "candidates": k}
            for e, evaluate in evaluators.items():
                evaluate(inputs, targets, layer, keep[:2])  # warm-up, records the prefix
                start = time.perf_counter()
                evaluate(inputs, targets, layer, keep)
                row[f"{e}_ms"] = round((time.perf_counter() - start) / k * 1000, 2)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--picks", type=int, default=None, help="channels per layer (0: the MACs target)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--per-layer", action="store_true", help="time one step per layer instead")
    parser.add_argument("--schedules", action="store_true", help="exact vs fast vs TP")
    parser.add_argument(
        "--variants",
        default='{"fast": {}}',
        help="--schedules: fast schedules as JSON, name: Fast options (default Fast())",
    )
    parser.add_argument("--estimate-exact", action="store_true", help="estimate exact's time")
    parser.add_argument("--scaling", action="store_true", help="seconds against width")
    parser.add_argument("--multipliers", default="0.5,1,2,4", help="comma-separated")
    parser.add_argument("--plot", default=None, help="where --scaling writes its plot")
    parser.add_argument(
        "--measure-exact-to", type=float, default=1.0, help="--scaling: widest full exact run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.schedules:
        for key in args.models.split(","):
            row = time_schedules(
                key,
                batch=args.batch,
                ratio=args.macs,
                estimate_exact=args.estimate_exact,
                variants=json.loads(args.variants),
            )
            print(json.dumps(row), flush=True)
        return
    if args.scaling:
        rows = scaling(
            [float(m) for m in args.multipliers.split(",")],
            batch=args.batch,
            ratio=args.macs,
            measure_exact_to=args.measure_exact_to,
        )
        if args.plot:
            plot_scaling(rows, args.plot)
        return
    if args.per_layer:
        for name in args.models.split(","):
            rows = per_layer(name, batch=args.batch, candidates=args.candidates, device=args.device)
            print(json.dumps({name: rows}, indent=1) if args.json else f"# {name}")
            if not args.json:
                print("layer | width | candidates | naive_ms | fast_ms")
                for r in rows:
                    print(" | ".join(str(v) for v in r.values()))
        return
    results = {
        name: measure(
            name,
            batch=args.batch,
            candidates=args.candidates,
            ratio=args.macs,
            device=args.device,
            picks=args.picks,
        )
        for name in args.models.split(",")
    }
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "gfsprune": gfsprune.__version__,
    }
    if args.json:
        print(json.dumps({"models": results, "machine": machine}, indent=1))
        return
    print(f"# {machine}")
    header = ["model", "naive_s", "fast_s", "speedup", "identical", "limit_fraction"]
    print(" | ".join(header))
    for name, r in results.items():
        print(" | ".join([name] + [str(r[k]) for k in header[1:]]))


if __name__ == "__main__":
    main()
