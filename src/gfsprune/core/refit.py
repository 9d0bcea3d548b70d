"""Refit: after a layer's channels are chosen, re-solve its consumers' weights by least squares.

Greedy selection keeps the trained weights of the channels it picks; the layers that read
them still expect the removed ones. Refitting (He et al., 2017; ThiNet; El Halabi et al.,
2022: greedy selection with a fully corrective step) solves, for each consumer, the weights
on its kept inputs that best reproduce what the *unpruned* network's consumer computed on
the same calibration batches, given the inputs the pruned-so-far network now gives it:

    min_W  || Y_unpruned - X_pruned W ||^2 + ridge * trace(X'X) / d * ||W||^2

with X the kept input positions (a convolution's input patches, unfolded), d their number.
Memory stays bounded: only X'X (d x d) and X'Y are accumulated, batch by batch, in float64.
A refit that does not lower the loss on the calibration batches is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gfsprune._inputs import run_model
from gfsprune.surgery import ChannelLayer, Masks

__all__ = ["refit_consumers"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The least-squares problem of one consumer has d unknowns per output: larger ones are left
# as they are (d x d in float64: 8192 -> 512 MiB).
_MAX_UNKNOWNS = 8192


def _refittable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


def _rows(module: nn.Module, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The consumer's kept inputs as least-squares rows: ``(M, d)`` (a column of ones last
    where the module has a bias)."""
    if isinstance(module, nn.Linear):
        rows = x[..., kept].reshape(-1, len(kept))
    else:
        patches = F.unfold(  # (N, kept * kh * kw, L)
            x[:, kept],
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    rows = rows.double()
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)
    return rows


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The unpruned consumer's outputs as ``(M, out)`` rows."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1]).double()
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]).double()


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

    Only plain convolutions (``groups=1``, zero padding) and linear layers called once per
    forward pass are refit. The refit is kept only if the mean loss on ``batches`` does not
    rise; otherwise the weights are restored.

    Returns:
        The names of the consumers refit (none where the loss would have risen).
    """
    names = sorted({c.name for c in layer.consumers})
    modules = {n: work.get_submodule(n) for n in names}
    chosen = [n for n in names if _refittable(modules[n])]
    kept = {n: masks.input_factors(n).nonzero().flatten().cpu() for n in chosen}
    chosen = [
        n
        for n in chosen
        if 0 < len(kept[n]) * _patch(modules[n]) + (modules[n].bias is not None) <= _MAX_UNKNOWNS
    ]
    if not chosen:
        return []
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in chosen}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in chosen}
    gram: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    hooks = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: inputs[n].append(a[0]))
        for n in chosen
    ] + [
        unpruned.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: outputs[n].append(o))
        for n in chosen
    ]
    try:
        with torch.no_grad():
            for x, _ in batches:
                run_model(work, x)  # masked inputs: the mask (and rescale) already applied
                run_model(unpruned, x)
                for n in chosen:
                    if len(inputs[n]) != 1 or len(outputs[n]) != 1:
                        gram[n] = cross[n] = torch.empty(0)  # called twice: shared weights
                    elif n not in gram or gram[n].numel():
                        index = kept[n].to(inputs[n][0].device)
                        rows = _rows(modules[n], inputs[n][0], index)
                        target = _targets(modules[n], outputs[n][0])
                        gram[n] = gram.get(n, 0) + rows.T @ rows
                        cross[n] = cross.get(n, 0) + rows.T @ target
                    inputs[n].clear()
                    outputs[n].clear()
    finally:
        for h in hooks:
            h.remove()
    before = _calibration_loss(work, batches, loss_fn)
    saved = {n: {k: v.clone() for k, v in modules[n].state_dict().items()} for n in chosen}
    refit = []
    for n in chosen:
        if not gram[n].numel():
            continue
        g = gram[n]
        eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        solution = torch.linalg.solve(g + ridge * torch.trace(g) / g.shape[0] * eye, cross[n])
        _assign(modules[n], kept[n], solution.T)  # (out, d)
        refit.append(n)
    if refit and _calibration_loss(work, batches, loss_fn) > before:
        for n in refit:
            modules[n].load_state_dict(saved[n])
        return []
    return refit


def _patch(module: nn.Module) -> int:
    """Input positions per kept channel: the kernel's size (1 for a linear layer)."""
    if isinstance(module, nn.Linear):
        return 1
    kh, kw = module.kernel_size
    return kh * kw


def _assign(module: nn.Module, kept: torch.Tensor, solution: torch.Tensor) -> None:
    """Write ``solution`` (``(out, d)``, the bias last where there is one) into the weights
    that read the ``kept`` input channels."""
    weight = module.weight
    if module.bias is not None:
        module.bias.data.copy_(solution[:, -1].to(module.bias.dtype))
        solution = solution[:, :-1]
    index = kept.to(weight.device)
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            weight[:, index] = solution.to(weight.dtype)
        else:
            kh, kw = module.kernel_size
            shaped = solution.reshape(weight.shape[0], len(index), kh, kw)
            weight[:, index] = shaped.to(weight.dtype)
