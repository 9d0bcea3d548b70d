"""The first consumer of a layer run once on the channels all candidates share, plus a small
per-candidate correction (exact by linearity)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SharedPlusDelta"]


class SharedPlusDelta:
    """``module(x * factors[k])`` for every row ``k`` of ``factors``, with ``module`` run
    once on the factors all rows share and, per row, only on the few inputs where the row
    differs from them (one batched matrix product over the rows' input patches): linearity
    makes the sum exact up to rounding.

    ``rows(start, stop)`` stacks those rows' outputs along the batch dimension. Made by
    :meth:`build`.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        common: torch.Tensor,
        diff: torch.Tensor,
        count: int,
    ) -> None:
        self.module, self.x = module, x
        # Each row's differing inputs first (ties keep index order), padded with zero factors
        # to ``count`` (at least one) per row.
        order = (diff != 0).to(torch.int8).argsort(dim=1, descending=True, stable=True)
        self.index = order[:, :count]
        self.coef = diff.gather(1, self.index)
        conv = not isinstance(module, nn.Linear)
        shape = (-1,) + (1,) * (x.dim() - 2) if conv else (-1,)
        shared = type(module).forward(module, x * common.view(shape))
        last = shared.movedim(1, -1) if conv else shared  # features last
        self.out_shape = last.shape
        self.shared = last.reshape(-1, last.shape[-1])  # (positions, out)

    @classmethod
    def build(
        cls, module: nn.Module, x: torch.Tensor, factors: torch.Tensor
    ) -> SharedPlusDelta | None:
        """The product for ``module`` (the first consumer), ``x`` (its unmasked input) and
        ``factors`` (``(K, inputs)``), or ``None`` where it would not save work: unless
        ``module`` is a linear layer or an ungrouped 2-d convolution that does enough work
        per output (64 multiply-adds per differing input; measured on a 2-core CPU) and
        several rows differ in few of its inputs.

        The shared factors are the rows' minimum (as in forward selection) or maximum (as
        in backward elimination), whichever leaves fewer differences.
        """
        if isinstance(module, nn.Linear):
            work = module.in_features
        elif type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
            work = module.in_channels * math.prod(module.kernel_size)
        else:
            return None
        if factors.shape[0] < 2:
            return None
        splits = [(factors - common, common) for common in (factors.amin(0), factors.amax(0))]
        counts = [int((diff != 0).sum(1).max()) for diff, _ in splits]
        count = min(counts)
        diff, common = splits[counts.index(count)]
        count = max(count, 1)
        if count * 4 > factors.shape[1] or work < 64 * count:
            return None
        return cls(module, x, common, diff, count)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        index, coef, module, x = self.index[start:stop], self.coef[start:stop], self.module, self.x
        k, n = index.shape
        if isinstance(module, nn.Linear):
            flat = x.reshape(-1, x.shape[-1])
            patches = flat[:, index].permute(1, 0, 2)  # (k, positions, n)
            weight = (module.weight[:, index] * coef).permute(1, 2, 0)  # (k, n, out)
        else:
            taps = math.prod(module.kernel_size)
            patches = nn.functional.unfold(
                x[:, index.flatten()],
                module.kernel_size,
                dilation=module.dilation,
                padding=module.padding,
                stride=module.stride,
            )  # (B, k * n * taps, L)
            patches = patches.unflatten(1, (k, n * taps)).permute(1, 0, 3, 2).flatten(1, 2)
            weight = module.weight[:, index] * coef.view(k, n, 1, 1)  # (out, k, n, kh, kw)
            weight = weight.permute(1, 2, 3, 4, 0).flatten(1, 3)  # (k, n * taps, out)
        out = torch.baddbmm(self.shared.expand(k, -1, -1), patches, weight)
        out = out.view(k * self.out_shape[0], *self.out_shape[1:])  # features last
        if isinstance(module, nn.Linear):
            return out
        out = out.movedim(-1, 1)  # channels-last strides
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()
