"""Whether removing channels computes what masking them does, and which layers it holds for.

Masking a layer's channels at its consumers is exactly removing them wherever every op
between producers and consumers follows the channels (Torch-Pruning's groups). Some models
fix a channel count where Torch-Pruning cannot see it: a split into parts of fixed sizes
(timm's FasterNet, CSPNet), ``x[:, :self.out_chs]`` after a concatenation (GhostNet), a
reshape by a fixed head count (CrossViT, CoaT), a parameter the pruner does not cut. There,
the physically pruned model either no longer runs or computes something else.

:func:`removable_layers` finds out before selection: every layer is cut to a random half of
its items in one trial copy, and its output compared with the masked model's; if they differ,
the smallest prefix of the layers (in execution order) whose trial fails is found by
bisection, its last layer is skipped, and the search repeats on the rest. The reason names
the module and the op where the pruned model failed, or the first module whose output
differs. :func:`removal_difference` is the same comparison for the final plan.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import traceback
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gfsprune._copying import copy_model
from gfsprune._inputs import map_tensors, run_hooked, tensors
from gfsprune.errors import GfsPruneError, first_line
from gfsprune.surgery.layers import ChannelLayer
from gfsprune.surgery.masks import Masks
from gfsprune.surgery.remove import remove_channels

__all__ = ["removable_layers", "removal_difference"]

_log = logging.getLogger(__name__)
_TORCH = str(Path(torch.__file__).parent) + os.sep  # torch itself, not torchvision
_TRIAL_SCALE = 1.5  # a rescale other than 1, so the trial also checks its folding


def removal_difference(
    model: nn.Module,
    pruned: nn.Module,
    example_inputs: object,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    scales: Mapping[str, float],
    held: Collection[str] = (),
) -> str | None:
    """Why ``pruned`` does not compute what ``model`` with ``layers`` masked to ``kept``
    (and scaled by ``scales``) does, naming the module and op; ``None`` if it does. The
    modules in ``held`` are not named: their outputs differ by design (convolutions whose
    rescale the BatchNorm after them holds).

    Float32 on a CPU agrees to ~1e-6; GPUs use TF32 convolutions by default (~1e-3), so the
    tolerance is 1e-4 (CPU) or 1e-2 (GPU) of the output's largest magnitude plus one.
    """
    expected = _masked_output(model, example_inputs, layers, kept, scales)
    outcome = _outcome(pruned, example_inputs, expected)
    if not isinstance(outcome, float):
        return outcome
    if _agree_in_float64(model, pruned, example_inputs, layers, kept, scales):
        _log.warning(
            "The pruned model's outputs move by up to %.3g under float rounding (its masked "
            "and its physically pruned form agree in float64 only): narrow layers amplify "
            "rounding errors; keep more channels where that matters.",
            outcome,
        )
        return None
    cut = _outputs(pruned, example_inputs)
    with _masked(model, layers, kept, scales):
        return _described(outcome, pruned, cut, _outputs(model, example_inputs), held)


def _agree_in_float64(
    model: nn.Module,
    pruned: nn.Module,
    example_inputs: object,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    scales: Mapping[str, float],
) -> bool:
    """Whether float64 copies of ``model`` masked and ``pruned`` compute the same (to 1e-8
    relative): their float32 outputs then differ by rounding alone, which a network with a
    few channels per layer may amplify past :func:`_close`'s tolerance. ``False`` where the
    models do not run in float64."""
    inputs = map_tensors(example_inputs, lambda t: t.double() if t.is_floating_point() else t)
    try:
        narrow = copy_model(pruned).double()
        expected = _masked_output(copy_model(model).double(), inputs, layers, kept, scales)
    except Exception:  # noqa: BLE001 - the user's code may not run in float64
        return False
    return _outcome(narrow, inputs, expected, relative=1e-8) is None


def removable_layers(
    model: nn.Module, example_inputs: object, layers: Sequence[ChannelLayer], *, seed: int = 0
) -> tuple[list[ChannelLayer], list[str]]:
    """The layers of ``model`` whose removal computes what masking does (checked on a trial
    cut to a random half of their items, in place and undone), and the others as
    ``"name (reason)"``. ``model`` is unchanged."""
    g = torch.Generator().manual_seed(seed)
    trial = {layer.name: _trial_keep(layer, g) for layer in layers}

    def failure(subset: Sequence[ChannelLayer]) -> str | None:
        kept = {layer.name: trial[layer.name] for layer in subset}
        return _trial(model, example_inputs, layers, kept, dict.fromkeys(kept, _TRIAL_SCALE))

    good, skipped = list(layers), []
    reason = failure(good)
    while reason is not None:
        bad = _culprits(good, reason, failure) or [_last_of_failing_prefix(good, failure)]
        for layer, why in bad:
            good.remove(layer)
            skipped.append(f"{layer.name} (removing its channels is not what masking does: {why})")
        reason = failure(good) if good else None
    return good, skipped


def _culprits(layers: list, reason: str, failure) -> list[tuple[ChannelLayer, str]]:
    """The layers of ``layers`` (whose trial fails with ``reason``) that fail alone, found by
    halving: a half that passes holds none. Empty where only a combination fails."""
    if len(layers) == 1:
        return [(layers[0], reason)]
    half = len(layers) // 2
    found = []
    for part in (layers[:half], layers[half:]):
        why = failure(part)
        if why is not None:
            found += _culprits(part, why, failure)
    return found


def _last_of_failing_prefix(layers: list, failure) -> tuple[ChannelLayer, str]:
    """The last layer of the shortest failing prefix of ``layers`` (the whole list fails),
    by bisection, with the prefix's reason: for failures only a combination causes."""
    passes, fails, reason = 0, len(layers), ""
    while fails - passes > 1:
        middle = (passes + fails) // 2
        why = failure(layers[:middle])
        if why is None:
            passes = middle
        else:
            fails, reason = middle, why
    return layers[fails - 1], reason or str(failure(layers))


def _trial(
    model: nn.Module,
    example_inputs: object,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    scales: Mapping[str, float],
) -> str | None:
    """:func:`removal_difference` for ``model`` cut in place to ``kept``, then restored."""
    expected = _masked_output(model, example_inputs, layers, kept, scales)
    with _restored(model):
        try:
            remove_channels(model, layers, kept, scales=scales)
        except GfsPruneError as err:
            return first_line(err)
        outcome = _outcome(model, example_inputs, expected)
        if not isinstance(outcome, float):
            return outcome
        cut = _outputs(model, example_inputs)
    with _masked(model, layers, kept, scales):
        return _described(outcome, model, cut, _outputs(model, example_inputs))


# nn.Module's own containers a cut changes; its hook dictionaries are left to the hooks'
# handles (copying them too doubled the trial's cost).
_STATE = ("_parameters", "_buffers", "_modules")


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Every module's attributes put back as they were on exit. Cutting replaces parameters
    and buffers (never changes them in place) and sets plain attributes; a forward pass may
    fill caches: a shallow copy of each module's attributes, and of its parameter, buffer and
    submodule dictionaries and public containers, is enough."""
    saved = []
    for module in model.modules():
        attrs = {
            k: copy.copy(v)
            if k in _STATE or (not k.startswith("_") and isinstance(v, dict | list | set))
            else v
            for k, v in vars(module).items()
        }
        saved.append((module, attrs))
    try:
        yield
    finally:
        for module, attrs in saved:
            vars(module).clear()
            vars(module).update(attrs)


def _outcome(
    pruned: nn.Module, example_inputs: object, expected: object, relative: float | None = None
) -> str | float | None:
    """``None`` if ``pruned`` computes ``expected`` (:func:`_close`, ``relative``); why it
    fails to run (module and op); or the largest difference of its output."""
    names = {m: n for n, m in pruned.named_modules()}
    running: list[str] = []  # the modules running, innermost last (as they were on an error)

    def enter(module: nn.Module, _args: tuple) -> None:
        running.append(names[module])

    def leave(module: nn.Module, _args: tuple, _out: object) -> None:
        if running and running[-1] == names[module]:
            running.pop()

    try:
        got = run_hooked(pruned.eval(), example_inputs, before=enter, after=leave)
    except Exception as err:  # noqa: BLE001 - the pruned model runs the user's code
        return _where_failed(err, running)
    return None if _close(got, expected, relative) else _max_difference(got, expected)


def _described(
    diff: float,
    pruned: nn.Module,
    cut: Mapping[str, torch.Tensor],
    masked: Mapping[str, torch.Tensor],
    held: Collection[str] = (),
) -> str:
    """The output difference, and the first module (in the order modules finish, those in
    ``held`` left out) whose output has the same shape in both models but not the same
    values."""
    text = f"outputs differ by up to {diff:.3g}"
    for name, out in cut.items():
        other = None if name in held else masked.get(name)
        if other is not None and out.shape == other.shape and not _close(out, other):
            return f"{text}, first at '{name}' ({type(pruned.get_submodule(name)).__name__})"
    return text


def _trial_keep(layer: ChannelLayer, g: torch.Generator) -> list[int]:
    """A random half of ``layer``'s items (one at least), every concatenated part kept."""
    n = layer.n_items
    picks = torch.randperm(n, generator=g)[: max(1, n // 2)].tolist()
    channels = set(layer.channels(picks))
    for part in layer.segments:
        if not channels & set(part):
            channels.update(layer.channels(layer.items_of(part[:1])))
    return sorted(channels)


def _masked_output(
    model: nn.Module,
    example_inputs: object,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    scales: Mapping[str, float],
) -> object:
    """``model``'s output with ``layers`` masked to ``kept`` (scaled by ``scales``)."""
    with _masked(model, layers, kept, scales):
        return run_hooked(model, example_inputs)


@contextmanager
def _masked(
    model: nn.Module,
    layers: Sequence[ChannelLayer],
    kept: Mapping[str, Sequence[int]],
    scales: Mapping[str, float],
) -> Iterator[None]:
    by_name = {layer.name: layer for layer in layers}
    with Masks(model, [by_name[name] for name in kept]) as masks, torch.no_grad():
        for name, channels in kept.items():
            masks.set(by_name[name], channels, float(scales.get(name, 1.0)))
        yield


def _where_failed(err: BaseException, running: list[str]) -> str:
    """``'module' at `code` (file:line): error`` for an error of the pruned model: the
    innermost module running and the innermost line of code outside torch."""
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_TORCH)
    ]
    module = running[-1] if running else ""
    where = f"'{module}'" if module else "the model"
    if frames:
        f = frames[-1]
        where += f" at `{(f.line or '').strip()}` ({Path(f.filename).name}:{f.lineno})"
    return f"{where}: {type(err).__name__}: {first_line(err)}"


def _close(got: object, expected: object, relative: float | None = None) -> bool:
    """Whether every tensor of ``got`` (a tensor, or a dict/tuple of them: a model's output)
    equals its counterpart in ``expected`` up to float rounding (``relative`` to the largest
    magnitude plus one; default float32's on the device)."""
    pairs = _pairs(got, expected)
    if pairs is None:
        return False
    for g, e in pairs:
        finite = e[e.isfinite()] if e.is_floating_point() else e
        scale = float(finite.abs().max()) + 1.0 if finite.numel() else 1.0
        default = 1e-4 if e.device.type == "cpu" else 1e-2
        tol = scale * (default if relative is None else relative)
        if _difference(g, e) > tol:
            return False
    return True


def _max_difference(got: object, expected: object) -> float:
    """The largest difference between the tensors of ``got`` and ``expected``; equal
    infinities and NaNs at the same places count as equal (a model whose weights hold NaN is
    refused later, with its own message)."""
    pairs = _pairs(got, expected)
    if pairs is None:
        return math.inf
    return max((_difference(g, e) for g, e in pairs), default=0.0)


def _pairs(got: object, expected: object) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The tensors of two outputs side by side; ``None`` where their structure or shapes
    differ."""
    a, b = tensors(got), tensors(expected)
    if not b or len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return None
    return list(zip(a, b, strict=True))


def _difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    if not got.numel():
        return 0.0
    got, expected = got.double(), expected.double()
    same = (got == expected) | (got.isnan() & expected.isnan())
    diff = torch.where(same, 0.0, (got - expected).abs()).max().item()
    return math.inf if math.isnan(diff) else diff


def _outputs(model: nn.Module, example_inputs: object) -> dict[str, torch.Tensor]:
    """Every module's tensor output of one forward pass, in the order they finish."""
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[str, torch.Tensor] = {}

    def record(module: nn.Module, _args: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor) and names[module]:
            outputs.setdefault(names[module], out.detach().clone())

    run_hooked(model, example_inputs, after=record)
    return outputs
