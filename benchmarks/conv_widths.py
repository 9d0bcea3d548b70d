"""Which channel widths are fast on this machine: 3x3 convolutions and residual blocks timed
at given (input, output) widths, in both memory formats (issue 14).

MACs fall with the widths, but a pruned model's speed depends on the kernels the widths get:
on a CPU, narrow layers are bound by memory traffic more than by arithmetic, and a width's
kernel can be slower than a narrower or wider one. This prints, for each pair of widths, the
median milliseconds of one 3x3 convolution (padding 1, no bias) and of a stack of residual
blocks (``in`` channels on the residual stream, ``out`` inside each block, as in a ResNet
stage whose stream and inner convolutions were pruned to those widths), in the contiguous
(NCHW) and the channels-last formats, timed in turns after two warm-up rounds (as
``round_to.py`` times its models).

    .venv/bin/python benchmarks/conv_widths.py                       # 32x32, batch 64, 1 thread
    .venv/bin/python benchmarks/conv_widths.py --widths 11:11 16:8 8:8 --side 56 --batch 1
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch
from round_to import in_turns
from torch import nn

_DEFAULT_WIDTHS = ("8:8", "11:11", "12:12", "16:8", "8:16", "16:11", "16:16", "24:24", "32:32")


class _Block(nn.Module):
    """A ResNet basic block: ``stream`` channels in and out, ``inner`` between its convs."""

    def __init__(self, stream: int, inner: int):
        super().__init__()
        self.conv1 = nn.Conv2d(stream, inner, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, stream, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stream)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=list(_DEFAULT_WIDTHS), help="IN:OUT pairs")
    parser.add_argument("--side", type=int, default=32, help="feature map side (default 32)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9, help="residual blocks per stack")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = [tuple(int(w) for w in pair.split(":")) for pair in args.widths]
    cases: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        for c_in, c_out in pairs:
            x = torch.randn(args.batch, c_in, args.side, args.side).contiguous(memory_format=fmt)
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).eval()
            stack = nn.Sequential(*(_Block(c_in, c_out) for _ in range(args.blocks))).eval()
            for kind, module in (("conv", conv), ("blocks", stack)):
                cases[f"{fmt}|{c_in}:{c_out}|{kind}"] = (module.to(memory_format=fmt), x)
    ms = {name: 1e3 * statistics.median(t) for name, t in in_turns(cases, args.rounds).items()}
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), CPU, {args.side}x{args.side}, batch {args.batch}, "
        f"{args.blocks} blocks"
    )
    print(
        "| in | out | conv MACs (M) | conv ms NCHW | conv ms channels-last | blocks ms NCHW "
        "| blocks ms channels-last |"
    )
    print("|---|---|---|---|---|---|---|")
    for c_in, c_out in pairs:
        macs = c_in * c_out * 9 * args.side**2 * args.batch / 1e6
        cells = [
            f"{ms[f'{fmt}|{c_in}:{c_out}|{kind}']:.2f}"
            for kind in ("conv", "blocks")
            for fmt in (torch.contiguous_format, torch.channels_last)
        ]
        print(f"| {c_in} | {c_out} | {macs:.0f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
