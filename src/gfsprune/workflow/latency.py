"""Measured CPU latency: what a pruned model's speed-up really is."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

__all__ = ["latencies", "measure_latency"]

#: The batch sizes every report measures: one sample (interactive use) and 64 (throughput).
BATCHES = (1, 64)


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, repeats: int = 5
) -> float:
    """Median seconds of a forward pass on the CPU at ``batch_size`` (random inputs of
    ``input_shape`` per sample), after two warm-up runs; ``model`` itself is not moved."""
    model = copy.deepcopy(model).cpu().eval()
    inputs = torch.randn(batch_size, *input_shape)
    times = []
    with torch.inference_mode():
        for step in range(repeats + 2):
            start = time.perf_counter()
            model(inputs)
            if step >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def latencies(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``{"latency_b1": s, "latency_b64": s}``: :func:`measure_latency` at each of
    :data:`BATCHES`, with torch's current thread count.

    Example:
        >>> sorted(latencies(nn.Linear(4, 2), (4,)))
        ['latency_b1', 'latency_b64']
    """
    return {f"latency_b{b}": measure_latency(model, input_shape, b) for b in BATCHES}
