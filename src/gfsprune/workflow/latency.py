"""Measured CPU latency: what a pruned model's speed-up really is."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from gfsprune._inputs import map_tensors, run_model

__all__ = ["latencies", "measure_latency"]

#: The batch sizes every report measures: one sample (interactive use) and 64 (throughput).
BATCHES = (1, 64)


def measure_latency(
    model: nn.Module, sample: tuple[int, ...] | object, batch_size: int, *, repeats: int = 5
) -> float:
    """Median seconds of a forward pass on the CPU at ``batch_size``, after two warm-up runs;
    ``model`` itself is not moved. ``sample`` is the shape of one input (random inputs are
    drawn) or one example input (a tensor, tuple or dict of batch 1, e.g. token ids),
    repeated to the batch."""
    model = copy.deepcopy(model).cpu().eval()
    if isinstance(sample, tuple) and all(isinstance(size, int) for size in sample):
        inputs: object = torch.randn(batch_size, *sample)
    else:
        inputs = map_tensors(sample, lambda t: t.cpu().expand(batch_size, *t.shape[1:]).clone())
    times = []
    with torch.inference_mode():
        for step in range(repeats + 2):
            start = time.perf_counter()
            run_model(model, inputs)
            if step >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def latencies(model: nn.Module, sample: tuple[int, ...] | object) -> dict[str, float]:
    """``{"latency_b1": s, "latency_b64": s}``: :func:`measure_latency` at each of
    :data:`BATCHES`, with torch's current thread count.

    Example:
        >>> sorted(latencies(nn.Linear(4, 2), (4,)))
        ['latency_b1', 'latency_b64']
    """
    return {f"latency_b{b}": measure_latency(model, sample, b) for b in BATCHES}
