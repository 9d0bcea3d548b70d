"""Measured latency: what a pruned model's speed-up really is, on the CPU and, where a job
runs on one, on the accelerator (a GPU)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gfsprune._inputs import move
from gfsprune.core.timing import batched, median_seconds, synchronize

__all__ = ["latencies", "measure_latency", "synchronize"]

#: The batch sizes every report measures: one sample (interactive use) and 64 (throughput).
BATCHES = (1, 64)


def measure_latency(
    model: nn.Module,
    sample: tuple[int, ...] | object,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 5,
) -> float:
    """Median seconds of a forward pass on ``device`` at ``batch_size``, after two warm-up
    runs, waiting for the device to finish each; ``model`` itself is not moved. ``sample``
    is the shape of one input (random inputs are drawn) or one example input (a tensor,
    tuple or dict of batch 1, e.g. token ids), repeated to the batch."""
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).eval()
    if isinstance(sample, tuple) and all(isinstance(size, int) for size in sample):
        inputs: object = torch.randn(batch_size, *sample, device=device)
    else:
        inputs = batched(move(sample, device), batch_size)
    return median_seconds(model, inputs, repeats=repeats)


def latencies(
    model: nn.Module, sample: tuple[int, ...] | object, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """:func:`measure_latency` at each of :data:`BATCHES`, with torch's current thread count:
    ``{"latency_b1": s, "latency_b64": s}`` on the CPU, and where ``device`` is an
    accelerator also ``gpu_latency_b1`` and ``gpu_latency_b64`` on it.

    Example:
        >>> sorted(latencies(nn.Linear(4, 2), (4,)))
        ['latency_b1', 'latency_b64']
    """
    found = {f"latency_b{b}": measure_latency(model, sample, b) for b in BATCHES}
    if torch.device(device).type != "cpu":
        found |= {
            f"gpu_latency_b{b}": measure_latency(model, sample, b, device=device) for b in BATCHES
        }
    return found
