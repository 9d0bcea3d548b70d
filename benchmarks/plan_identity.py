"""Plans of a fixed list of small pruning runs, to check that a refactor leaves them unchanged.

Each case prunes a small model (zoo models at ``width_mult=0.25``, 7 classes; torchvision's
resnet18 at 32x32) on three random batches of four with few candidates, so that each takes
seconds; together they cover ``Macs``/``Params``/``Widths``/``Tolerance``, the ``uniform`` and
``curves`` allocators, ``round_to`` 1/4/8, the exact and fast schedules, backward
elimination, no rescale, refit and per-layer tuning. The kept channels, scales, per-pick
losses and the MACs and parameters after are written to JSON (with each case's seconds,
which are not compared). Run it with two source trees and compare:

    PYTHONPATH=/work/main/src .venv/bin/python benchmarks/plan_identity.py --out main.json
    PYTHONPATH=src .venv/bin/python benchmarks/plan_identity.py --out branch.json
    .venv/bin/python benchmarks/plan_identity.py --compare main.json branch.json

It uses only the API that existed before the planning refactor (issue 26), so that the same
script runs on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from gfsprune import Macs, Params, PruneConfig, Tolerance, Widths, models, prune
from gfsprune.core.tuning import LayerTuning
from gfsprune.surgery import find_layers

# name: (model, target, options); a Widths target is given as the share of each layer kept.
CASES: dict[str, tuple[str, object, dict]] = {
    "digits-macs-curves": ("digits_cnn", Macs(0.5), {}),
    "digits-params-uniform-seed1": ("digits_cnn", Params(0.4), {"allocator": "uniform", "seed": 1}),
    "digits-tolerance": ("digits_cnn", Tolerance(0.05), {}),
    "digits-widths-curves": ("digits_cnn", 0.5, {}),
    "digits-macs-round4-tuning": (
        "digits_cnn",
        Macs(0.5),
        {"round_to": 4, "tuning": LayerTuning(steps=1)},
    ),
    "resnet20-macs-curves": ("resnet20", Macs(0.5), {}),
    "resnet20-macs-uniform-round4": (
        "resnet20",
        Macs(0.5),
        {"allocator": "uniform", "round_to": 4},
    ),
    "resnet20-params-uniform-seed1": ("resnet20", Params(0.4), {"allocator": "uniform", "seed": 1}),
    "resnet20-tolerance": ("resnet20", Tolerance(0.05), {}),
    "resnet20-widths-curves": ("resnet20", 0.5, {}),
    "resnet20-backward": ("resnet20", Macs(0.6), {"strategy": "backward", "allocator": "uniform"}),
    "resnet20-norescale-all": ("resnet20", Macs(0.5), {"rescale": False, "candidates": None}),
    "resnet20-fast-curves": ("resnet20", Macs(0.5), {"schedule": "fast"}),
    "resnet20-refit": ("resnet20", Macs(0.5), {"refit": True, "allocator": "uniform"}),
    "resnet56-fast-round4": ("resnet56", Macs(0.5), {"schedule": "fast", "round_to": 4}),
    "resnet56-params-uniform": ("resnet56", Params(0.5), {"allocator": "uniform"}),
    "mobilenet_v2-macs-curves": ("mobilenet_v2", Macs(0.5), {}),
    "mobilenet_v2-uniform-round8": (
        "mobilenet_v2",
        Macs(0.5),
        {"allocator": "uniform", "round_to": 8},
    ),
    "mobilenet_v2-tolerance-fast": ("mobilenet_v2", Tolerance(0.1), {"schedule": "fast"}),
    "mobilenet_v3_small-macs-curves": ("mobilenet_v3_small", Macs(0.5), {}),
    "proxylessnas_mobile-uniform": ("proxylessnas_mobile", Macs(0.5), {"allocator": "uniform"}),
    "vgg16_bn-uniform": ("vgg16_bn", Macs(0.5), {"allocator": "uniform"}),
    "resnet18-fast-uniform-round8": (
        "torchvision:resnet18",
        Macs(0.5),
        {"schedule": "fast", "allocator": "uniform", "round_to": 8},
    ),
    "resnet18-widths": ("torchvision:resnet18", 0.25, {"schedule": "fast"}),
}


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "digits_cnn":
        return models.get(name), (1, 8, 8)
    if name.startswith("torchvision:"):
        return models.get(name, num_classes=7), (3, 32, 32)
    options = {"small_input": True} if "mobilenet" in name or "proxyless" in name else {}
    return models.get(name, num_classes=7, width_mult=0.25, **options), (3, 32, 32)


def run_case(name: str) -> dict:
    """One case's plan (and its seconds)."""
    model_name, target, options = CASES[name]
    model, shape = _model(model_name)
    model.eval()
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(4, *shape, generator=g), torch.randint(0, 7, (4,), generator=g))
        for _ in range(3)
    ]
    example = data[0][0][:1]
    if isinstance(target, float):  # Widths: that share of every channel layer
        layers, _ = find_layers(model, example)
        target = Widths({layer.name: max(1, int(layer.width * target)) for layer in layers})
    # the network loss with curves widths unless a case says otherwise (the default until 0.1.0)
    config = PruneConfig(**{"candidates": 2, "objective": "loss", "allocator": "curves", **options})
    start = time.perf_counter()
    result = prune(model, data, example, target=target, config=config, progress=False)
    seconds = time.perf_counter() - start
    return {
        "plan": [[p.name, p.width, p.kept, p.scale] for p in result.plan],
        "losses": [[log.losses, log.reference] for log in result.layers],
        "macs_after": result.macs_after,
        "params_after": result.params_after,
        "seconds": round(seconds, 2),
    }


def compare(a_path: str, b_path: str) -> bool:
    """Print, per case, whether the two files' plans are bit-identical (seconds ignored)."""
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    same = True
    for name in CASES:
        if name not in a or name not in b:
            print(f"{name}: missing")
            same = False
            continue
        strip = ({k: v for k, v in r.items() if k != "seconds"} for r in (a[name], b[name]))
        equal = next(strip) == next(strip)
        same &= equal
        verdict = "identical" if equal else "DIFFERENT"
        print(f"{name}: {verdict} ({a[name]['seconds']} s, {b[name]['seconds']} s)")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", help="write the plans here (JSON; cases added to an existing file)"
    )
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two outputs")
    args = parser.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    torch.set_num_threads(1)
    results = {}
    if args.out and os.path.exists(args.out):  # a file from an earlier run: cases added
        with open(args.out) as f:
            results = json.load(f)
    for name in args.cases:
        results[name] = run_case(name)
        print(f"{name}: {results[name]['seconds']} s", flush=True)
        if args.out:  # after every case, so an interrupted run keeps what it did
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
