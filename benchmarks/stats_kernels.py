"""The two kernels under the reconstruction objective's statistics (issue 29), timed one
against the other on this machine:

- a stride-1 convolution consumer's statistics on one calibration batch, from its unfolded
  rows (``ConsumerStats.add``) against shifted products of the batch laid out as one wide
  image (``shifted.add_shifted``), at the shapes of torchvision resnet18's stages at
  224x224 (3x3 convolutions after a ReLU, zero padding);
- one forward pass of torchvision models on a batch of 224x224 images in the default memory
  order against channels-last (what the statistics' passes feed a model that gives the same
  outputs so).

Each time is the best of ``--repeats``; random inputs and weights.

    .venv/bin/python benchmarks/stats_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision
from torch import nn

from gfsprune.scoring.reconstruction import gram, shifted

#: (channels, side) of a 3x3 consumer's input: resnet18's four stages at 224, and a stem-like map.
SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7), (32, 112)]
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def statistics_row(channels: int, side: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    x = torch.relu(torch.randn(batch, channels, side, side))
    with torch.no_grad():
        y = conv(x)
    padded, kernel, dilation, _ = gram._padded(conv, x, None)

    def unfolded() -> None:
        stats = gram.ConsumerStats.zeros(conv, torch.device("cpu"))
        stats.add(gram.columns(conv, x), gram.output_columns(conv, y))

    def moved() -> None:
        stats = gram.ConsumerStats.zeros(conv, torch.device("cpu"))
        shifted.add_shifted(stats, padded, y, shifted.frames(padded, kernel, dilation))

    cheaper = gram._shifted_is_cheaper(conv, padded, shifted.frames(padded, kernel, dilation))
    return {
        "input": f"{batch}x{channels}x{side}x{side}",
        "unfolded_s": round(_best(unfolded, repeats), 3),
        "shifted_s": round(_best(moved, repeats), 3),
        "chosen": "shifted" if cheaper else "unfolded",
    }


def layout_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    x = torch.randn(batch, 3, 224, 224)
    last = x.contiguous(memory_format=torch.channels_last)
    for name in MODELS:
        model = getattr(torchvision.models, name)(num_classes=10).eval()
        with torch.no_grad():
            model(x)  # warm-up
            plain = _best(lambda model=model: model(x), repeats)
            channels_last = _best(lambda model=model: model(last), repeats)
        rows.append(
            {
                "model": name,
                "default_s": round(plain, 3),
                "channels_last_s": round(channels_last, 3),
                "speed_up": round(plain / channels_last, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="statistics' batch (forward: /2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}, {args.threads} thread(s), torch {torch.__version__}")
    print("| consumer input | unfolded (s) | shifted (s) | chosen |")
    print("|---|---|---|---|")
    for r in (statistics_row(c, side, args.batch, args.repeats) for c, side in SHAPES):
        print(f"| {r['input']} | {r['unfolded_s']} | {r['shifted_s']} | {r['chosen']} |")
    print()
    print("| model | forward, default order (s) | channels-last (s) | speed-up |")
    print("|---|---|---|---|")
    for r in layout_rows(args.batch // 2, args.repeats):
        print(f"| {r['model']} | {r['default_s']} | {r['channels_last_s']} | {r['speed_up']} |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
