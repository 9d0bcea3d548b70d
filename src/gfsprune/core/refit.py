"""Refit: after a layer's channels are chosen, re-solve its consumers' weights by least squares.

Greedy selection keeps the trained weights of the channels it picks; the layers that read
them still expect the removed ones. Refitting (He et al., 2017; ThiNet; El Halabi et al.,
2022: greedy selection with a fully corrective step) solves, for each consumer, the weights
on its kept inputs that best reproduce what the *unpruned* network's consumer computed on
the same calibration batches, given the inputs the pruned-so-far network now gives it:

    min_W  || Y_unpruned - X_pruned W ||^2 + ridge * trace(X'X) / d * ||W||^2

with X the kept input positions (a convolution's input patches, unfolded), d their number.
The statistics are :mod:`gfsprune.scoring.reconstruction`'s (one streamed pass, float64, memory
bounded by X'X), and so is the solve (grouped convolutions group by group).
A refit that does not lower the loss on the calibration batches is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from gfsprune._inputs import run_model
from gfsprune.scoring.reconstruction.gram import (
    UndescribedConsumer,
    collect_stats,
    unsupported,
)
from gfsprune.scoring.reconstruction.problem import LayerProblem
from gfsprune.surgery import ChannelLayer, Masks

__all__ = ["refit_consumers"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _calibration_loss(model: nn.Module, batches: Sequence[tuple], loss_fn: LossFn) -> float:
    with torch.no_grad():
        losses = [float(loss_fn(run_model(model, x), y)) for x, y in batches]
    return sum(losses) / len(losses)


def refit_consumers(
    work: nn.Module,
    unpruned: nn.Module,
    layer: ChannelLayer,
    masks: Masks,
    batches: Sequence[tuple],
    loss_fn: LossFn,
    *,
    ridge: float = 1e-4,
) -> list[str]:
    """Re-solve the weights of ``layer``'s consumers in ``work`` (masked by ``masks``) on
    their kept inputs, so that they reproduce ``unpruned``'s consumers on ``batches``.

    Linear layers and 1-D and 2-D convolutions (any stride, padding, dilation and groups;
    subclasses where their weights times their padded inputs reproduce their outputs) with at
    most 8192 inputs (channels x kernel taps) are refit. The refit is kept only if
    the mean loss on ``batches`` does not rise; otherwise the weights are restored.

    Returns:
        The names of the consumers refit (none where the loss would have risen).
    """
    modules = {
        n: work.get_submodule(n)
        for n in sorted({c.name for c in layer.consumers})
        if unsupported(work.get_submodule(n)) is None
    }
    if not modules:
        return []
    try:
        stats = collect_stats(work, unpruned, modules, batches)
    except UndescribedConsumer:
        return []
    factors = {n: masks.input_factors(n) for n in modules}
    problem = LayerProblem(layer, stats, modules, factors)
    first = layer.consumers[0]  # every consumer sees the layer's channels alike
    live = masks.input_factors(first.name)[first.index].cpu() != 0
    kept = layer.items_of(first.root[live].tolist())
    before = _calibration_loss(work, batches, loss_fn)
    saved = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in modules.items()}
    refit = problem.refit(kept, 1.0, ridge=ridge)  # the masked inputs carry the scale
    if refit and _calibration_loss(work, batches, loss_fn) > before:
        for n in refit:
            modules[n].load_state_dict(saved[n])
        return []
    return refit
