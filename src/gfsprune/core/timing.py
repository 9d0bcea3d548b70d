"""Timing on a device: the median seconds of a module's forward pass after warm-up runs,
waiting for an accelerator to finish each."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from gfsprune._inputs import map_tensors, run_model, tensors

__all__ = ["batched", "median_seconds", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an accelerator (``torch.cuda``, ``torch.mps``, ...): on
    ``device`` itself where its backend takes one (CUDA and XPU)."""
    if device.type in ("cuda", "xpu"):
        getattr(torch, device.type).synchronize(device)
    elif device.type != "cpu":
        getattr(torch, device.type).synchronize()


def median_seconds(
    module: nn.Module,
    inputs: object,
    *,
    warmup: int = 2,
    repeats: int = 5,
    min_seconds: float = 0.0,
    max_repeats: int = 100,
) -> float:
    """Median seconds of ``module`` called on ``inputs`` (a tensor, tuple or dict) in
    inference mode, over ``repeats`` calls after ``warmup`` untimed ones, waiting for the
    inputs' device to finish each; more calls (up to ``max_repeats``) while the timed ones
    add up to less than ``min_seconds`` (a fast module is timed more often).

    Example:
        >>> median_seconds(nn.Linear(4, 2), torch.randn(8, 4)) > 0
        True
    """
    device = next(iter(tensors(inputs)), torch.empty(0)).device
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            run_model(module, inputs)
        while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_repeats):
            synchronize(device)
            start = time.perf_counter()
            run_model(module, inputs)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def batched(example: object, batch: int) -> object:
    """``example`` (a tensor, tuple or dict of batch 1) repeated to ``batch`` along the first
    dimension of every tensor, in new memory.

    Example:
        >>> batched(torch.zeros(1, 3), 4).shape
        torch.Size([4, 3])
    """
    return map_tensors(example, lambda t: t.expand(batch, *t.shape[1:]).clone())
