"""Channel masks applied at a layer's consumers, with the paper's mean-field rescale.

A removed channel contributes nothing downstream once the consumers' inputs are masked, which
is exactly what physical removal does, so the masked network and the pruned network compute the
same function. The mean-field rescale (kept channels times D/n, the official code's mask
weights) is applied at the same place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from gfsprune.surgery.layers import ChannelLayer

__all__ = ["Masks"]


class Masks:
    """Channel masks (with the mean-field scale) applied at the consumers' inputs.

    Use as a context manager: hooks are installed on entry and removed on exit. Every layer
    starts at full width with scale 1. ``candidates(...)`` evaluates several channel sets of
    one layer at once: the input batch is repeated once per set and each copy is masked
    with its own set.
    """

    def __init__(self, model: nn.Module, layers: Sequence[ChannelLayer]) -> None:
        self._model = model
        self._base: dict[str, torch.Tensor] = {}
        self._batched: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for layer in layers:
            for c in layer.consumers:
                module = modules[c.name]
                size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
                param = next(module.parameters())
                self._base.setdefault(c.name, torch.ones(size, device=param.device))
        self._full = set(self._base)  # consumers whose mask is all ones: left untouched
        #: Counts the calls of :meth:`set`: what was computed under the same version saw the
        #: same masks.
        self.version = 0
        self._bypassed: set[str] = set()
        self._models: list[nn.Module] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Masks:
        self.attach(self._model)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unhook()
        self._models.clear()

    def attach(self, model: nn.Module) -> nn.Module:
        """Mask ``model`` too, until exit: a copy of the masked network (same module names,
        e.g. with BatchNorms folded) made under :meth:`suspended`. Returns it."""
        self._models.append(model)
        self._hook_model(model)
        return model

    def detach(self, model: nn.Module) -> None:
        """Stop masking ``model``, a copy :meth:`attach` added (e.g. one gone stale)."""
        self._unhook()
        self._models = [m for m in self._models if m is not model]
        for m in self._models:
            self._hook_model(m)

    @property
    def unmasked(self) -> bool:
        """Every layer at full width with factor 1 (the masks change nothing)."""
        return self._full == set(self._base)

    @property
    def consumers(self) -> list[str]:
        """The names of the modules whose inputs are masked."""
        return list(self._base)

    def input_factors(self, name: str) -> torch.Tensor:
        """The current factor on each input of the consumer ``name`` (0: removed)."""
        return self._base[name]

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The networks unmasked for a while (to copy or trace them without the hooks)."""
        self._unhook()
        try:
            yield
        finally:
            for model in self._models:
                self._hook_model(model)

    def _hook_model(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self._base:
            module = modules[name]
            self._handles.append(module.register_forward_pre_hook(self._hook(name, module)))

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str, module: nn.Module):
        linear = isinstance(module, nn.Linear)

        def hook(_mod: nn.Module, args: tuple) -> tuple | None:
            if name in self._bypassed:
                # Only the first call is computed elsewhere: a module applied twice (shared
                # weights) must have its later calls masked (issue 15).
                self._bypassed.discard(name)
                return None
            x = args[0]
            factors = self._batched.get(name)
            if factors is None:
                if name in self._full:
                    return None  # x * 1 == x
                factors = self._base[name]
                shape = [-1] if linear else [-1] + [1] * (x.dim() - 2)
                return (x * factors.view(shape), *args[1:])
            k = factors.shape[0]  # (K, I): one mask per candidate set
            if linear:
                shape = [k, 1] + [1] * (x.dim() - 2) + [-1]
            else:
                shape = [k, 1, -1] + [1] * (x.dim() - 2)
            grouped = x.unflatten(0, (k, -1))  # (K, B, ...)
            return ((grouped * factors.view(shape)).flatten(0, 1), *args[1:])

        return hook

    def set(self, layer: ChannelLayer, kept: Sequence[int], scale: float) -> None:
        """Keep only ``kept`` channels of ``layer``, each multiplied by ``scale``."""
        self.version += 1
        keep = torch.zeros(1, layer.width)
        keep[0, list(kept)] = scale
        for c in layer.consumers:
            base = self._base[c.name]
            base[c.index] = keep[0, c.root].to(base.device)
            if bool((base == 1).all()):
                self._full.add(c.name)
            else:
                self._full.discard(c.name)

    def factors(self, layer: ChannelLayer, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per consumer of ``layer``, its input factors for each row of ``keep`` (``(K,
        width)``): ``(K, inputs)``, the other layers' masks included."""
        out: dict[str, torch.Tensor] = {}
        for c in layer.consumers:
            base = out.get(c.name, self._base[c.name])
            batched = base.expand(keep.shape[0], -1).clone()
            batched[:, c.index] = keep[:, c.root].to(base.device)
            out[c.name] = batched
        return out

    @contextmanager
    def candidates(
        self, layer: ChannelLayer, keep: torch.Tensor, *, bypass: Iterable[str] = ()
    ) -> Iterator[None]:
        """Mask ``layer`` with each row of ``keep`` (``(K, width)`` factors) in one pass.
        The consumers named in ``bypass`` are left unmasked for their first call in the pass
        (its output is computed from :meth:`factors` elsewhere); later calls are masked."""
        try:
            self._batched.update(self.factors(layer, keep))
            self._bypassed.update(bypass)
            yield
        finally:
            self._batched.clear()
            self._bypassed.clear()
