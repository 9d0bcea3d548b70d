"""``prune``: greedy forward selection of channels, layer by layer, into a smaller network.

The deep version of the paper (its section 2 in our notes): layers are visited from input to
output; within a layer every channel starts off and, at each step, up to ``candidates``
not-yet-kept channels are scored by the loss of the whole network on a fresh mini-batch with
the layer restricted to the kept channels plus the candidate; the best one is kept.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from gfsprune import distributed
from gfsprune._inputs import move, run_model
from gfsprune.core.budget import CostModel, allocate_widths, check_reachable
from gfsprune.core.counting import count
from gfsprune.core.strategies import select_layer
from gfsprune.core.stream import BatchStream
from gfsprune.errors import ConfigError, DataError, ModelError
from gfsprune.plan import LayerLog, LayerPlan, PruneResult
from gfsprune.scoring import EVALUATORS, make_evaluator
from gfsprune.surgery import (
    ChannelLayer,
    Masks,
    build_graph,
    find_layers,
    prune_channels,
)
from gfsprune.targets import Macs, Params, Target, Tolerance, Widths

__all__ = ["LayerPlan", "LayerLog", "PruneResult", "prune"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The tolerance rule compares losses on a fixed set of batches (the paper uses a fixed
# training subset); picks are still scored on the fresh batches that follow.
_HELD_OUT_BATCHES = 4
_STRATEGIES = ("forward", "backward")


def _check_first_batch(model: nn.Module, batch: tuple, loss_fn: LossFn) -> float:
    inputs, targets = batch
    try:
        with torch.no_grad():
            loss = float(loss_fn(run_model(model, inputs), targets))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise DataError(
            f"The model and loss could not run on the first mini-batch (inputs {shape}): "
            f"{str(err).splitlines()[0]}. Check that the data's shape and labels match the "
            "model and example_inputs."
        ) from err
    if not math.isfinite(loss):
        raise DataError(
            f"The unpruned model's loss on the first mini-batch is {loss}; check the model "
            "weights and the data for NaN/inf before pruning."
        )
    return loss


def _resolve_ignore(model: nn.Module, ignore: Iterable[nn.Module | str]) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    resolved = []
    for item in ignore:
        name = item if isinstance(item, str) else names.get(item)
        if name is None or name not in modules:
            raise ConfigError(
                f"'ignore' must name modules of the model (objects or qualified names). "
                f"Got {item!r}, which is not one of them."
            )
        resolved.append(name)
    return resolved


def _check_options(target, candidates, evaluator, strategy) -> None:
    if not isinstance(target, Macs | Params | Tolerance | Widths):
        raise ConfigError(
            "'target' must be gfsprune.Macs(ratio), gfsprune.Params(ratio), "
            f"gfsprune.Tolerance(eps) or gfsprune.Widths({{...}}). Got {target!r} instead."
        )
    if candidates is not None and (
        isinstance(candidates, bool) or not isinstance(candidates, int) or candidates <= 0
    ):
        raise ConfigError(f"'candidates' must be a positive integer or None. Got {candidates!r}.")
    if evaluator not in EVALUATORS:
        raise ConfigError(f"'evaluator' must be one of {sorted(EVALUATORS)}. Got {evaluator!r}.")
    if strategy not in _STRATEGIES:
        raise ConfigError(f"'strategy' must be one of {list(_STRATEGIES)}. Got {strategy!r}.")
    if strategy == "backward" and isinstance(target, Tolerance):
        raise ConfigError(
            "strategy='backward' needs a size target (Macs, Params or Widths), not Tolerance."
        )


def _fixed_widths(target: Widths, layers: Sequence[ChannelLayer]) -> list[int]:
    by_name = {layer.name: layer for layer in layers}
    unknown = sorted(set(target.widths) - set(by_name))
    if unknown:
        raise ConfigError(
            f"Widths names layers {unknown[:5]} that are not prunable channel layers of this "
            f"model; its layers are {sorted(by_name)[:8]}..."
        )
    too_wide = {n: w for n, w in target.widths.items() if w > by_name[n].width}
    if too_wide:
        raise ConfigError(
            f"Widths asks for more channels than these layers have: {too_wide}; the layers' "
            f"widths are { {n: by_name[n].width for n in too_wide} }."
        )
    return [target.widths.get(layer.name, layer.width) for layer in layers]


def prune(
    model: nn.Module,
    data: Iterable,
    example_inputs: object,
    *,
    target: Target,
    loss_fn: LossFn | None = None,
    candidates: int | None = 50,
    ignore: Sequence[nn.Module | str] = (),
    rescale: bool = True,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    evaluator: str = "batched",
    strategy: str = "forward",
    checkpoint: str | os.PathLike | None = None,
) -> PruneResult:
    """Prune ``model`` by greedy forward selection of channels.

    Args:
        model: Any network Torch-Pruning can trace; it is not modified.
        data: Re-iterable ``(inputs, targets)`` mini-batches; each greedy step draws the next.
        example_inputs: Inputs for tracing and counting (a tensor, tuple or dict).
        target: ``Macs(r)`` or ``Params(r)`` (fraction of the original to keep, uniform
            per-layer widths), ``Tolerance(eps)`` (per layer, add channels until the loss on
            a fixed held-out batch set is within ``eps`` of its starting value), or
            ``Widths({layer: n})`` (exact widths).
        loss_fn: ``loss_fn(outputs, targets)``; defaults to cross-entropy.
        candidates: Channels scored per step, a seeded random subset (``None``: all).
        ignore: Modules (or their names) whose channel groups are left untouched.
        rescale: Multiply kept channels by ``width / kept`` (the paper's mean-field average)
            and fold the factor into the pruned model's weights.
        seed: Seeds the candidate sampling.
        progress: Show a progress bar per layer.
        device: Where to run (default: the model's device).
        evaluator: ``"batched"`` (fast) or ``"naive"`` (one forward per candidate, the
            reference); both give the same picks.
        strategy: ``"forward"`` (the paper) or ``"backward"`` (greedy backward elimination
            by loss, the approach the paper argues against).
        checkpoint: A JSON file updated after every layer; if it exists, the finished layers
            are restored from it and the run continues where it stopped, to the same plan.

    Under ``torch.distributed`` (e.g. ``torchrun``), every process must be given the same
    data in the same order: the candidates of each step are split across the processes and
    their losses gathered, so all make the same picks, and the plan equals a single-process
    run's. Only rank 0 shows progress and writes the checkpoint.

    Returns:
        The smaller model, the plan and the costs before and after.

    Example:
        >>> from gfsprune.models import get
        >>> net = get("digits_cnn")
        >>> x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        >>> result = prune(net, [(x, y)], x[:1], target=Macs(0.5), progress=False)
        >>> 0.48 <= result.macs_ratio <= 0.52
        True
    """
    _check_options(target, candidates, evaluator, strategy)
    loss_fn = loss_fn or nn.functional.cross_entropy
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    work = copy.deepcopy(model).to(device).eval()
    example_inputs = move(example_inputs, device)
    modules = dict(work.named_modules())
    ignored = [modules[n] for n in _resolve_ignore(model, ignore)]
    graph = build_graph(work, example_inputs)
    layers, skipped = find_layers(work, example_inputs, ignore=ignored, graph=graph)
    if not layers:
        raise ModelError(
            f"{type(model).__name__} has no prunable channel layer (every group is ignored, "
            "feeds the output directly, or cannot be masked exactly)."
        )
    macs_before, params_before = count(work, example_inputs)
    cost = CostModel(work, example_inputs, layers) if isinstance(target, Macs | Params) else None
    if cost is not None:
        check_reachable(cost, target)
    fixed = _fixed_widths(target, layers) if isinstance(target, Widths) else None
    settings = {
        "model": type(model).__name__,
        "layers": [[layer.name, layer.width] for layer in layers],
        "target": repr(target),
        "candidates": candidates,
        "rescale": rescale,
        "seed": seed,
        "strategy": strategy,
    }
    saved = _read_checkpoint(checkpoint, settings)

    stream = BatchStream(data, device)
    first = stream.next()
    _check_first_batch(work, first, loss_fn)
    held_out = []
    if isinstance(target, Tolerance):
        held_out = [first] + [stream.next() for _ in range(_HELD_OUT_BATCHES - 1)]
    plan = [LayerPlan(**entry) for entry in saved.get("plan", [])]
    logs = [LayerLog(**entry) for entry in saved.get("layers", [])]
    stream.skip_to(saved.get("drawn", 0))

    with Masks(work, layers) as masks:
        evaluate = make_evaluator(evaluator, work, masks, loss_fn, graph=graph)
        for layer, done in zip(layers, plan, strict=False):
            masks.set(layer, done.kept, done.scale)
        for index in range(len(plan), len(layers)):
            layer = layers[index]
            width = fixed[index] if fixed is not None else None
            if cost is not None:
                # Re-split the budget with the picks so far (exact for concatenations).
                done = {i: p.kept for i, p in enumerate(plan)}
                width = allocate_widths(cost, target, selected=done)[index]
            choice = select_layer(
                layer,
                width=width,
                tolerance=target.eps if isinstance(target, Tolerance) else None,
                strategy=strategy,
                stream=stream,
                evaluate=evaluate,
                masks=masks,
                held_out=held_out,
                candidates=candidates,
                rescale=rescale,
                seed=seed + index,
                bar=tqdm(
                    total=width or layer.width,
                    desc=f"[{index + 1}/{len(layers)}] {layer.name}",
                    disable=not progress or not distributed.is_main(),
                    leave=False,
                ),
            )
            plan.append(LayerPlan(layer.name, layer.width, choice.kept, choice.scale))
            logs.append(LayerLog(layer.name, choice.losses, choice.reference))
            if distributed.is_main():
                _write_checkpoint(checkpoint, settings, plan, logs, stream.drawn)
        with torch.no_grad():
            masked_out = run_model(work, example_inputs)

    pruned = prune_channels(
        work,
        example_inputs,
        {p.name: p.kept for p in plan},
        scales={p.name: p.scale for p in plan},
    )
    _check_equivalent(pruned, example_inputs, masked_out)
    macs_after, params_after = count(pruned, example_inputs)
    return PruneResult(
        model=pruned,
        plan=plan,
        layers=logs,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        example_inputs=example_inputs,
        skipped=skipped,
    )


def _read_checkpoint(path: str | os.PathLike | None, settings: dict) -> dict:
    """The saved progress of an interrupted run with the same settings, or ``{}``."""
    if path is None or not Path(path).exists():
        return {}
    try:
        saved = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"The checkpoint '{path}' is not valid JSON ({err}); delete it to start over."
        ) from err
    differs = [k for k in settings if saved.get("settings", {}).get(k) != settings[k]]
    if differs:
        raise ConfigError(
            f"The checkpoint '{path}' was written by a run with other settings (they differ "
            f"in: {', '.join(differs)}); delete it or choose another checkpoint path."
        )
    return saved


def _write_checkpoint(
    path: str | os.PathLike | None,
    settings: dict,
    plan: list[LayerPlan],
    logs: list[LayerLog],
    drawn: int,
) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": settings,
        "plan": [asdict(p) for p in plan],
        "layers": [asdict(log) for log in logs],
        "drawn": drawn,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _check_equivalent(pruned: nn.Module, example_inputs: object, expected: torch.Tensor) -> None:
    """The pruned network must compute what the masked one did."""
    with torch.no_grad():
        got = run_model(pruned.eval(), example_inputs)
    # Float32 on a CPU agrees to ~1e-6; GPUs use TF32 convolutions by default (~1e-3).
    scale = float(expected.abs().max()) + 1.0
    tol = scale * (1e-4 if expected.device.type == "cpu" else 1e-2)
    if got.shape != expected.shape or float((got - expected).abs().max()) > tol:
        raise ModelError(
            "The physically pruned model does not compute what the masked model did "
            f"(max difference {float((got - expected).abs().max()):.3g}); the model has an "
            "operation that mixes channels outside Conv/Linear layers. Add the modules "
            "around it to 'ignore'."
        )
