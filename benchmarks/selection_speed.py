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
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch_pruning as tp

import gfsprune
from gfsprune import Macs, PruneConfig, Widths, models, prune
from gfsprune.scoring import EVALUATORS, make_evaluator
from gfsprune.surgery import Masks, build_graph, find_layers

# name -> (constructor options, input shape (C, H, W), picks per layer or None for Macs)
MODELS = {
    "resnet20": ({"num_classes": 10}, (3, 32, 32), None),
    "mobilenet_v2": ({"num_classes": 10, "small_input": True}, (3, 32, 32), 4),
}


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
            config=PruneConfig(candidates=candidates, evaluator=evaluator, device=device),
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
    args = parser.parse_args()
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
