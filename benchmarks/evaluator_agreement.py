"""Do the fast and the naive evaluator make the same plan? The case of issue 15, per seed.

``resnet20`` (10 classes) with random weights, or trained for ``--epochs`` on
``synthetic:2000`` upsampled to 32x32 (``--trained``), 8 random batches of 64 CIFAR-shaped
inputs with random labels (``torch.Generator`` seeded by the seed), pruned to ``Macs(0.5)``
by the network loss (``objective="loss"``, ``curves`` widths: the default until 0.1.0),
every other option at its default, once with ``evaluator="batched"`` and once with
``"naive"``. Prints per seed whether the plans are identical, the largest relative
difference between the two runs' per-pick losses, how many candidates each run re-scored in
float64 (the near-ties at the tie window's edge, ``Evaluator.precise``), and the seconds of
each.

    .venv/bin/python benchmarks/evaluator_agreement.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import torch

import gfsprune
from gfsprune import Macs, PruneConfig, models, prune
from gfsprune.scoring import Evaluator
from gfsprune.workflow.data import load_data
from gfsprune.workflow.train import TrainConfig, fit


def _model(seed: int, trained: bool, epochs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.get("resnet20", num_classes=10)
    if trained:
        bundle = load_data("synthetic:2000", seed=seed)
        model = models.get("resnet20", num_classes=bundle.num_classes, image_size=16)
        fit(
            model,
            bundle,
            TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=seed),
            progress=False,
            device="cpu",
        )
    return model.eval()


_PRECISE = Evaluator.precise
_rescored = [0]


def _counting_precise(self, inputs, targets, layer, keep):
    _rescored[0] += len(keep)
    return _PRECISE(self, inputs, targets, layer, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trained", action="store_true", help="train the model first")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--allocator",
        choices=("curves", "uniform"),
        default="curves",
        help="the widths' allocator (uniform: the issue's case as filed, before curves)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Evaluator.precise = _counting_precise
    print(
        f"torch {torch.__version__}, gfsprune {gfsprune.__version__}, {args.threads} thread(s), "
        f"allocator {args.allocator}"
    )
    print(
        "| seed | weights | identical plans | max rel. loss difference "
        "| float64 re-scored (batched/naive) | batched s | naive s |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        model = _model(seed, args.trained, args.epochs)
        side = 16 if args.trained else 32
        g = torch.Generator().manual_seed(seed)
        data = [
            (torch.randn(64, 3, side, side, generator=g), torch.randint(0, 10, (64,), generator=g))
            for _ in range(8)
        ]
        runs, seconds, rescored = {}, {}, {}
        for evaluator in ("batched", "naive"):
            _rescored[0] = 0
            start = time.perf_counter()
            runs[evaluator] = prune(
                model,
                data,
                data[0][0][:1],
                target=Macs(0.5),
                config=PruneConfig(
                    objective="loss", seed=seed, evaluator=evaluator, allocator=args.allocator
                ),
                progress=False,
            )
            seconds[evaluator] = time.perf_counter() - start
            rescored[evaluator] = _rescored[0]
        same = [p.kept for p in runs["batched"].plan] == [p.kept for p in runs["naive"].plan]
        diff = max(
            abs(a - b) / abs(b)
            for la, lb in zip(runs["batched"].layers, runs["naive"].layers, strict=True)
            for a, b in zip(la.losses, lb.losses, strict=False)
        )
        weights = "trained" if args.trained else "random"
        print(
            f"| {seed} | {weights} | {'yes' if same else 'NO'} | {diff:.1e} "
            f"| {rescored['batched']}/{rescored['naive']} "
            f"| {seconds['batched']:.0f} | {seconds['naive']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
