"""The reconstruction objective's cost (issue 29): selection seconds against (number of channel
layers) x (one forward pass of the calibration set), the reference the issue sets its target
by (at most 3x).

Cases (random weights: only the time is measured; inputs random, labels the model's own
predictions, so the statistics are those of a real pass):

- ``resnet18``, ``mobilenet_v3_large``: torchvision's, 10 classes, ``--side`` x ``--side``
  (224), ``--images`` calibration images (1,024) in batches of ``--batch`` (64), ``Macs(0.5)``;
- ``minilm``: a MiniLM-L6-shaped BERT encoder (6 layers, hidden 384, 12 heads, intermediate
  1,536; ``transformers``' ``BertModel``) at sequence length ``--seq`` (128) on ``--sequences``
  (512) random token sequences, heads and MLP neurons pruned label-free (MSE to the unpruned
  model's last hidden state) to ``Macs(0.6)``;
- ``width``: the zoo's resnet20 (3x32x32, 1,024 images) at width multipliers ``--multipliers``
  (0.5, 1, 2, 4): the log-log slope of seconds against the channel count, beside the forward
  pass's.

Variants (``--variants``): ``recon`` (``Reconstruction()``, every candidate scored, ``uniform``
widths) and ``recon-curves`` (the same with the ``curves`` allocator measured along the
reconstruction paths, ``Curves(schedule=Exact())``); ``recon-rows`` is ``recon`` with
at most 8,192 rows per consumer and batch in the statistics (``Reconstruction(rows=8192)``;
the default takes every row); ``recon-from-input`` is ``recon`` with every statistics pass
run from the input (``Reconstruction(resume_gib=0)``; the default resumes each pass where the
previous layer's began). Calibration: every image of the case
(``Reconstruction(batches=images / batch)``).

    .venv/bin/python benchmarks/recon_cost.py --cases resnet18,mobilenet_v3_large,minilm
    .venv/bin/python benchmarks/recon_cost.py --cases width --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# Run as a script, this file's folder is sys.path[0], and transformers.py in it would shadow
# the transformers package: the folder goes before transformers is imported.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

import gfsprune  # noqa: E402
from gfsprune import Macs, PruneConfig, distill, models, prune  # noqa: E402
from gfsprune.core.allocate import Curves  # noqa: E402
from gfsprune.core.schedules import Exact  # noqa: E402
from gfsprune.scoring import Reconstruction  # noqa: E402
from gfsprune.surgery import find_layers  # noqa: E402

VARIANTS = ("recon", "recon-curves", "recon-rows", "recon-from-input")


class Encoder(nn.Module):
    """A BERT encoder returning its last hidden state (what distillation matches)."""

    def __init__(self, layers=6, hidden=384, heads=12, intermediate=1536) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
        )
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state


def _config(variant: str, batches: int) -> PruneConfig:
    allocator = Curves(schedule=Exact()) if variant == "recon-curves" else "uniform"
    rows = 8192 if variant == "recon-rows" else None
    resume_gib = 0.0 if variant == "recon-from-input" else 4.0
    return PruneConfig(
        objective=Reconstruction(batches=batches, rows=rows, resume_gib=resume_gib),
        candidates=None,
        allocator=allocator,
    )


def _forward_seconds(model: nn.Module, inputs: list) -> float:
    """One forward pass over ``inputs`` (best of two, after a warm-up batch)."""
    best = math.inf
    with torch.inference_mode():
        model(inputs[0])
        for _ in range(2):
            start = time.perf_counter()
            for x in inputs:
                model(x)
            best = min(best, time.perf_counter() - start)
    return best


def time_case(
    model: nn.Module, inputs: list, target: float, variant: str, *, labelled: bool
) -> dict:
    """Prune ``model`` on ``inputs`` (batches) with ``variant``; seconds against the
    reference. ``labelled``: classification on the model's own predictions; else
    label-free (MSE to the unpruned model's outputs)."""
    example = inputs[0][:1]
    layers, _ = find_layers(model, example)
    forward = _forward_seconds(model, inputs)
    if labelled:
        with torch.inference_mode():
            data, loss_fn = [(x, model(x).argmax(1)) for x in inputs], None
    else:
        data, loss_fn = distill(model, inputs, kind="mse")
    start = time.perf_counter()
    result = prune(
        model,
        data,
        example,
        target=Macs(target),
        config=_config(variant, len(inputs)),
        loss_fn=loss_fn,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "layers": len(layers),
        "channels": sum(layer.width for layer in layers),
        "forward_s": round(forward, 3),
        "seconds": round(seconds, 1),
        "ratio": round(seconds / (len(layers) * forward), 2),
        "macs_ratio": round(result.macs_ratio, 4),
    }


def _images(side: int, images: int, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(min(batch, images - i), 3, side, side, generator=g)
        for i in range(0, images, batch)
    ]


def run_case(name: str, args: argparse.Namespace, variant: str) -> list[dict]:
    torch.manual_seed(0)
    if name in ("resnet18", "mobilenet_v3_large"):
        model = getattr(torchvision.models, name)(num_classes=10).eval()
        inputs = _images(args.side, args.images, args.batch)
        rows = [time_case(model, inputs, 0.5, variant, labelled=True)]
    elif name == "minilm":
        model = Encoder().eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 30522, (args.sequences, args.seq), generator=g)
        inputs = list(ids.split(args.seq_batch))
        rows = [time_case(model, inputs, 0.6, variant, labelled=False)]
    else:  # width
        rows = []
        for mult in (float(m) for m in args.multipliers.split(",")):
            torch.manual_seed(0)
            model = models.get("resnet20", num_classes=10, width_mult=mult).eval()
            inputs = _images(32, args.images, args.batch)
            rows.append(
                {"width_mult": mult} | time_case(model, inputs, 0.5, variant, labelled=True)
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for row in rows:
        row["case"] = name
    return rows


def slopes(rows: list[dict]) -> dict[str, float]:
    """Log-log slopes against the channel count: the selection's and the forward pass's."""
    channels = np.log([r["channels"] for r in rows])
    return {
        key: round(float(np.polyfit(channels, np.log([r[key] for r in rows]), 1)[0]), 2)
        for key in ("seconds", "forward_s")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="resnet18,mobilenet_v3_large,minilm,width")
    parser.add_argument("--variants", default="recon", help=f"comma-separated: {VARIANTS}")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--seq-batch", type=int, default=32)
    parser.add_argument("--multipliers", default="0.5,1,2,4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)",
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "load_average_start": os.getloadavg(),
        "args": vars(args),
        "rows": [],
    }
    for variant in args.variants.split(","):
        for case in args.cases.split(","):
            rows = run_case(case, args, variant)
            record["rows"] += rows
            if case == "width":
                record[f"slopes {variant}"] = slopes(rows)
            for row in rows:
                print(json.dumps(row), file=sys.stderr, flush=True)
    record["load_average_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(record, indent=1))
        return
    print(
        "| case | variant | layers | forward of the calibration set (s) | selection (s) | "
        "/ (layers x forward) | MACs ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in record["rows"]:
        case = r["case"] + (f" x{r['width_mult']}" if "width_mult" in r else "")
        print(
            f"| {case} | {r['variant']} | {r['layers']} | {r['forward_s']} | {r['seconds']} | "
            f"{r['ratio']} | {r['macs_ratio']} |"
        )
    for key, value in record.items():
        if key.startswith("slopes"):
            print(f"{key}: selection {value['seconds']}, forward pass {value['forward_s']}")
    print(f"load average {record['load_average_start']} -> {record['load_average_end']}")


if __name__ == "__main__":
    main()
