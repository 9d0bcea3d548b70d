"""Tiny reconstruction problems and their brute-force errors (explicit masked consumers)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from gfsprune.scoring.reconstruction.gram import collect_stats, outputs, positions, weight_matrix
from gfsprune.scoring.reconstruction.problem import LayerProblem
from gfsprune.surgery import ChannelLayer, Masks, find_layers
from tests.nets import Fan, randomize_norms, tiny_vit


class Conv1dNet(nn.Module):
    """A 1-D layer read by a strided convolution with circular padding and no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv1d(2, 6, 3, padding=1)
        self.c1 = nn.Conv1d(6, 4, 3, stride=2, padding=2, padding_mode="circular", bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c1(torch.relu(self.c0(x)))).mean(2))


@dataclass
class Case:
    """A layer of ``work`` (masked by ``masks``) to reconstruct ``unpruned``'s consumers of."""

    name: str
    work: nn.Module
    unpruned: nn.Module
    layers: list[ChannelLayer]
    layer: ChannelLayer
    masks: Masks
    batches: list[tuple]
    norms: dict[str, nn.Module]

    @property
    def consumers(self) -> list[str]:
        return sorted({c.name for c in self.layer.consumers})

    def problem(
        self, batches: list[tuple] | None = None, *, intercept: bool = False
    ) -> LayerProblem:
        batches = batches or self.batches
        stats = collect_stats(self.work, self.unpruned, self.consumers, batches, folds=True)
        modules = {n: self.work.get_submodule(n) for n in self.consumers}
        factors = {n: self.masks.input_factors(n) for n in self.consumers}
        means = self.reference_means() if intercept else None
        return LayerProblem(self.layer, stats, modules, factors, self.norms, means)

    def reference_means(self) -> dict[str, torch.Tensor]:
        """The unpruned network's running means of the BatchNorms after the consumers without
        a bias."""
        names = {m: n for n, m in self.work.named_modules()}
        return {
            c: self.unpruned.get_submodule(names[norm]).running_mean
            for c, norm in self.norms.items()
            if self.work.get_submodule(c).bias is None
        }

    def offset(self, name: str) -> torch.Tensor | float:
        """The intercept of consumer ``name`` folded into the BatchNorm after it (0: none)."""
        means = self.reference_means()
        if name not in means:
            return 0.0
        return (means[name] - self.norms[name].running_mean).double()

    def keep(self, factors: torch.Tensor) -> torch.Tensor:
        """Item factors as the layer's ``(1, width)`` channel factors."""
        keep = torch.zeros(1, self.layer.width)
        for item, channels in enumerate(self.layer.item_index.tolist()):
            keep[0, channels] = float(factors[item])
        return keep

    def captured(self, factors: torch.Tensor) -> dict[str, list[tuple]]:
        """Per consumer and call: (masked input, output, unpruned output), in float64."""
        seen: dict[str, list] = {n: [] for n in self.consumers}
        ref: dict[str, list] = {n: [] for n in self.consumers}
        hooks = [
            self.work.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: seen[n].append((a[0].double(), o.double()))
            )
            for n in self.consumers
        ] + [
            self.unpruned.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: ref[n].append(o.double())
            )
            for n in self.consumers
        ]
        with torch.no_grad():
            for x, _ in self.batches:
                with self.masks.candidates(self.layer, self.keep(factors)):
                    self.work(x)
                self.unpruned(x)
        for h in hooks:
            h.remove()
        return {n: [(*s, r) for s, r in zip(seen[n], ref[n], strict=True)] for n in seen}

    def weights(self, name: str) -> torch.Tensor:
        norm = self.norms.get(name)
        out = self.work.get_submodule(name).weight.shape[0]
        if norm is None:
            return torch.ones(out, dtype=torch.float64)
        scale = norm.weight.detach().double() / (norm.running_var.double() + norm.eps).sqrt()
        return scale.pow(2)

    def masked_error(self, factors: torch.Tensor) -> float:
        """The weighted squared error of the consumers with the items scaled by ``factors``."""
        return sum(self.masked_errors(factors).values())

    def masked_errors(self, factors: torch.Tensor) -> dict[str, float]:
        """:meth:`masked_error` per consumer."""
        errors = {}
        for name, calls in self.captured(factors).items():
            module, errors[name] = self.work.get_submodule(name), 0.0
            for _, y, target in calls:
                diff = outputs(module, y) + self.offset(name) - outputs(module, target)
                errors[name] += float(self.weights(name) @ diff.pow(2).sum(0).detach())
        return errors

    def refit_error(self, items: list[int], *, intercept: bool = False) -> float:
        """The weighted squared error with ``items`` kept and every consumer's weights
        re-solved by (undamped) least squares on its kept inputs, group by group (with an
        intercept where ``intercept`` and a BatchNorm follows a consumer without a bias)."""
        factors = torch.zeros(self.layer.n_items)
        factors[items] = 1.0
        total = 0.0
        for name, calls in self.captured(factors).items():
            module = self.work.get_submodule(name)
            x = torch.cat([positions(module, a) for a, _, _ in calls])
            t = torch.cat([outputs(module, r) for _, _, r in calls])
            ones = copy.deepcopy(module)
            for param in ones.parameters():
                param.data.fill_(1.0)
            reads = weight_matrix(ones) != 0  # (out, Q): the inputs each output reads
            reads[:, -1] |= intercept and name in self.reference_means()
            w = self.weights(name)
            for o in range(t.shape[1]):
                cols = reads[o] & (x.abs().sum(0) > 0)
                xs = x[:, cols]
                beta = torch.linalg.lstsq(xs, t[:, o : o + 1]).solution
                total += float(w[o] * (t[:, o : o + 1] - xs @ beta).pow(2).sum())
        return total


def _batches(shape: tuple[int, ...], count: int = 3, size: int = 6) -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, *shape, generator=g), None) for _ in range(count)]


def _perturbed(model: nn.Module, name: str) -> nn.Module:
    """A copy of ``model`` with ``name``'s weights changed: the inputs of the layers after
    it differ from the unpruned network's, as after pruning an earlier layer."""
    work = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    weight = work.get_submodule(name).weight
    weight.data.add_(0.3 * torch.randn(weight.shape, generator=g) * weight.std())
    return work


def fan(layer_name: str = "c0") -> Case:
    """:class:`tests.nets.Fan`: ``c0`` (three consumers, grouped items) or ``s`` (its
    consumer also reads the other layers' channels, and ``g``'s second item is removed)."""
    torch.manual_seed(0)
    unpruned = randomize_norms(Fan())
    work = _perturbed(unpruned, "c0")
    batches = _batches((3, 6, 6))
    layers, _ = find_layers(work, batches[0][0][:1])
    masks = Masks(work, layers).__enter__()
    by_name = {layer.name: layer for layer in layers}
    if layer_name == "s":
        masks.set(by_name["g"], [0, 2], 2.0)
    norms = {"s": work.bs}
    return Case(
        f"fan-{layer_name}", work, unpruned, layers, by_name[layer_name], masks, batches, norms
    )


def conv1d() -> Case:
    torch.manual_seed(0)
    unpruned = Conv1dNet().eval()
    work = _perturbed(unpruned, "c0")
    batches = _batches((2, 9))
    layers, _ = find_layers(work, batches[0][0][:1])
    masks = Masks(work, layers).__enter__()
    return Case("conv1d", work, unpruned, layers, layers[0], masks, batches, {})


def heads() -> Case:
    """The heads of a tiny timm ViT's first attention (4 heads of 6 channels, read by its
    output projection)."""
    pytest.importorskip("timm")
    unpruned = tiny_vit()
    work = _perturbed(unpruned, "blocks.0.attn.qkv")
    batches = _batches((3, 16, 16))
    layers, _ = find_layers(work, batches[0][0][:1])
    masks = Masks(work, layers).__enter__()
    layer = next(lay for lay in layers if lay.name == "blocks.0.attn")
    return Case("heads", work, unpruned, layers, layer, masks, batches, {})


#: Every case, by name.
CASES: dict[str, Callable[[], Case]] = {
    "fan": fan,
    "fan-s": lambda: fan("s"),
    "conv1d": conv1d,
    "heads": heads,
}
