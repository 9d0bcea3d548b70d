"""Counting multiply-accumulates and parameters with ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gfsprune._inputs import run_model

__all__ = ["count", "count_flops"]


def count_flops(model: nn.Module, example_inputs: object) -> FlopCounterMode:
    """The FLOP counter after one forward pass of ``model`` (in its current mode).

    Autograd stays on: under no_grad the counter's module tracker fails on some models (timm
    CaiT: "Expected gradient function to be set"), and one batch with autograd is cheap.
    """
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        run_model(model, example_inputs)
    return counter


def count(model: nn.Module, example_inputs: object) -> tuple[int, int]:
    """Count the MACs of one forward pass and the parameters of ``model``.

    MACs are PyTorch's FLOP count halved: its counter charges a multiply and an add for each
    multiply-accumulate of convolutions and matrix products (the ops it counts).

    Args:
        model: The network.
        example_inputs: A tensor, a tuple of positional arguments or a dict of keywords.

    Returns:
        ``(macs, params)``.

    Example:
        >>> count(nn.Linear(4, 2), torch.zeros(1, 4))
        (8, 10)
    """
    was_training = model.training
    model.eval()
    try:
        counter = count_flops(model, example_inputs)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() // 2, params
