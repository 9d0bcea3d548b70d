"""Measured latency: what a pruned model's speed-up really is, on the CPU and, where a job
runs on one, on the accelerator (a GPU)."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from gfsprune._inputs import map_tensors, run_model
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
        inputs = map_tensors(
            sample, lambda t: t.to(device).expand(batch_size, *t.shape[1:]).clone()
        )
    times = []
    with torch.inference_mode():
        for step in range(repeats + 2):
            synchronize(device)
            start = time.perf_counter()
            run_model(model, inputs)
            synchronize(device)
            if step >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an accelerator (``torch.cuda``, ``torch.mps``, ...): on
    ``device`` itself where its backend takes one (CUDA and XPU)."""
    if device.type in ("cuda", "xpu"):
        getattr(torch, device.type).synchronize(device)
    elif device.type != "cpu":
        getattr(torch, device.type).synchronize()


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
