"""Measured latency: what a pruned model's speed-up really is, on the CPU and, where a job
runs on one, on the accelerator (a GPU)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gfsprune._inputs import move
from gfsprune.core.timing import batched, median_seconds, synchronize
from gfsprune.io.latency import BATCHES, MeasuredLatency

__all__ = ["latencies", "measure_latency", "synchronize"]


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
) -> MeasuredLatency:
    """:func:`measure_latency` at each of :data:`~gfsprune.io.latency.BATCHES`: on the CPU
    with torch's current thread count, and where ``device`` is an accelerator on it too.

    Example:
        >>> sorted(latencies(nn.Linear(4, 2), (4,)).cpu)
        [1, 64]
    """
    cpu = {b: measure_latency(model, sample, b) for b in BATCHES}
    if torch.device(device).type == "cpu":
        return MeasuredLatency(cpu=cpu)
    return MeasuredLatency(
        cpu=cpu, gpu={b: measure_latency(model, sample, b, device=device) for b in BATCHES}
    )
