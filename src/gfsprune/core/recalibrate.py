"""BatchNorm recalibration: re-estimate running statistics after pruning, weights untouched.

Removing channels changes what every later BatchNorm sees, so the running means and
variances stored during training no longer describe its inputs (issue 12). Re-estimating them
on a few training batches costs only forward passes and changes no trained parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gfsprune._inputs import model_device, model_inputs, move, run_model
from gfsprune.errors import ConfigError, DataError, ModelError

__all__ = ["batch_norms", "recalibrate_bn"]


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def recalibrate_bn(
    model: nn.Module, batches: Iterable, *, num_batches: int = 50, labelled: bool = False
) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches``.

    The statistics become the plain (cumulative) average over the batches of each batch's
    mean and unbiased variance (``momentum=None``), so the order of the batches does not
    matter and no trace of the old statistics is left. Only the BatchNorm layers run in
    training mode; dropout and every other layer stay in eval mode, no gradient is computed
    and no parameter changes. Each layer's momentum and every module's mode are restored.

    Args:
        model: Changed in place (running statistics only); run on its own device.
        batches: Mini-batches of the model's inputs (a tensor, a tuple of positional
            arguments or a dict of keywords), e.g. training batches.
        num_batches: Use at most this many batches; 50 batches of 128 samples pin a channel's
            mean to about 1% of its standard deviation.
        labelled: Every batch is an ``(inputs, labels)`` pair; the labels are ignored.

    Returns:
        The number of batches used.

    Raises:
        ModelError: If the model has no BatchNorm with running statistics.
        DataError: If ``batches`` is empty (the statistics are then left as they were, as
            after any failure).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> recalibrate_bn(net, [torch.randn(8, 1, 6, 6) for _ in range(3)])
        3
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ConfigError(f"'num_batches' must be a positive integer. Got {num_batches!r} instead.")
    norms = batch_norms(model)
    if not norms:
        raise ModelError(
            f"{type(model).__name__} has no BatchNorm layer with running statistics; there is "
            "nothing to recalibrate."
        )
    device = model_device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    saved = {m: {k: v.clone() for k, v in m.state_dict().items()} for m in norms}
    used = 0
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative moving average: every batch weighs the same
            norm.train()
        with torch.no_grad():
            for batch in batches:
                if used == num_batches:
                    break
                run_model(model, move(model_inputs(batch, labelled=labelled), device))
                used += 1
        if used == 0:
            raise DataError("'batches' yielded no mini-batch; give recalibrate_bn some data.")
    except BaseException:
        for norm, state in saved.items():  # a failed recalibration leaves the model as it was
            norm.load_state_dict(state)
        raise
    finally:
        for module, training in modes.items():
            module.training = training
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    return used
