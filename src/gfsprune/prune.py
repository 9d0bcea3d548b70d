"""``prune``: greedy forward selection of channels, layer by layer, into a smaller network.

The deep version of the paper (its section 2 in our notes): layers are visited from input to
output; within a layer every channel starts off and, at each step, up to ``candidates``
not-yet-kept channels are scored by the loss of the whole network on a fresh mini-batch with
the layer restricted to the kept channels plus the candidate; the best one is kept.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from gfsprune.budget import CostModel, allocate_widths, check_reachable
from gfsprune.counting import count
from gfsprune.errors import ConfigError, DataError, ModelError
from gfsprune.evaluate import EVALUATORS, LossFn, make_evaluator
from gfsprune.select import forward_select
from gfsprune.surgery import (
    ChannelLayer,
    Masks,
    build_graph,
    find_layers,
    prune_channels,
    run_model,
)
from gfsprune.targets import Macs, Params, Target, Tolerance

__all__ = ["LayerPlan", "LayerLog", "PruneResult", "prune"]

_HELD_OUT_BATCHES = 4


@dataclass(frozen=True)
class LayerPlan:
    """What was kept of one channel layer.

    Attributes:
        name: Qualified name of the layer's root module.
        width: Its original number of channels.
        kept: The kept channels, in the order they were picked.
        scale: The factor folded into the consumers' weights (``width / len(kept)`` with
            rescaling, else 1).
    """

    name: str
    width: int
    kept: list[int]
    scale: float


@dataclass(frozen=True)
class LayerLog:
    """The selection trace of one layer: the loss after each pick, and the layer's
    starting loss (full width) where a tolerance target measured one."""

    name: str
    losses: list[float]
    reference: float | None = None


@dataclass
class PruneResult:
    """The outcome of :func:`prune`.

    Attributes:
        model: The physically smaller network (channels removed, not masked).
        plan: Per channel layer, in the order visited.
        layers: Per channel layer, the loss after each pick.
        macs_before, macs_after, params_before, params_after: Costs of one forward pass.
        example_inputs: The inputs the model was traced with (needed to rebuild it).
        skipped: Channel groups left at full width because they cannot be masked exactly.
    """

    model: nn.Module
    plan: list[LayerPlan]
    layers: list[LayerLog]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    example_inputs: object
    skipped: list[str]

    @property
    def macs_ratio(self) -> float:
        """MACs after pruning as a fraction of before."""
        return self.macs_after / self.macs_before

    @property
    def params_ratio(self) -> float:
        """Parameters after pruning as a fraction of before."""
        return self.params_after / self.params_before


def _move(obj: object, device: torch.device) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_move(v, device) for v in obj)
    return obj


def _batches(data: Iterable, device: torch.device) -> Iterator[tuple[object, torch.Tensor]]:
    """Cycle through ``data`` forever, checking that it yields ``(inputs, targets)`` pairs."""
    for epoch in itertools.count():
        empty = True
        for batch in data:
            empty = False
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise DataError(
                    "'data' must yield (inputs, targets) mini-batches; got a "
                    f"{type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
                    + ". Wrap your dataset in a DataLoader of (inputs, targets) pairs."
                )
            yield _move(batch[0], device), _move(batch[1], device)
        if empty:
            raise DataError(
                "'data' yielded no mini-batch"
                + (
                    " after its first pass; it must be re-iterable (a DataLoader or a list), "
                    "not a generator."
                    if epoch
                    else "; it is empty."
                )
            )


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
) -> PruneResult:
    """Prune ``model`` by greedy forward selection of channels.

    Args:
        model: Any network Torch-Pruning can trace; it is not modified.
        data: Re-iterable ``(inputs, targets)`` mini-batches; each greedy step draws the next.
        example_inputs: Inputs for tracing and counting (a tensor, tuple or dict).
        target: ``Macs(r)`` or ``Params(r)`` (fraction of the original to keep, uniform
            per-layer widths), or ``Tolerance(eps)`` (per layer, add channels until the
            loss on a fixed held-out batch set is within ``eps`` of its starting value).
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
    if not isinstance(target, Macs | Params | Tolerance):
        raise ConfigError(
            "'target' must be gfsprune.Macs(ratio), gfsprune.Params(ratio) or "
            f"gfsprune.Tolerance(eps). Got {target!r} instead."
        )
    if candidates is not None and (isinstance(candidates, bool) or candidates <= 0):
        raise ConfigError(f"'candidates' must be a positive integer or None. Got {candidates!r}.")
    if evaluator not in EVALUATORS:
        raise ConfigError(f"'evaluator' must be one of {sorted(EVALUATORS)}. Got {evaluator!r}.")
    loss_fn = loss_fn or nn.functional.cross_entropy
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    work = copy.deepcopy(model).to(device).eval()
    example_inputs = _move(example_inputs, device)
    ignore_names = _resolve_ignore(model, ignore)
    modules = dict(work.named_modules())
    graph = build_graph(work, example_inputs)
    layers, skipped = find_layers(
        work, example_inputs, ignore=[modules[n] for n in ignore_names], graph=graph
    )
    if not layers:
        raise ModelError(
            f"{type(model).__name__} has no prunable channel layer (every group is ignored, "
            "feeds the output directly, or cannot be masked exactly)."
        )
    macs_before, params_before = count(work, example_inputs)
    cost = None if isinstance(target, Tolerance) else CostModel(work, example_inputs, layers)
    if cost is not None:
        check_reachable(cost, target)

    stream = _batches(data, device)
    first = next(stream)
    _check_first_batch(work, first, loss_fn)
    stream = itertools.chain([first], stream)
    # The tolerance rule compares losses on a fixed set of batches (the paper uses a fixed
    # training subset); picks are still scored on the fresh batches that follow.
    held_out = (
        [next(stream) for _ in range(_HELD_OUT_BATCHES)] if isinstance(target, Tolerance) else []
    )

    plan: list[LayerPlan] = []
    logs: list[LayerLog] = []
    with Masks(work, layers) as masks:
        evaluate = make_evaluator(evaluator, work, masks, loss_fn)
        for index, layer in enumerate(layers):
            # Re-split the budget with the actual picks so far (exact for concatenations).
            width = None
            if cost is not None:
                done = {i: p.kept for i, p in enumerate(plan)}
                width = allocate_widths(cost, target, selected=done)[index]
            plan_i, log_i = _select_layer(
                layer,
                width,
                stream=stream,
                evaluate=evaluate,
                masks=masks,
                held_out=held_out,
                target=target,
                candidates=candidates,
                rescale=rescale,
                seed=seed + index,
                bar=tqdm(
                    total=width or layer.width,
                    desc=f"[{index + 1}/{len(layers)}] {layer.name}",
                    disable=not progress,
                    leave=False,
                ),
            )
            plan.append(plan_i)
            logs.append(log_i)
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


def _select_layer(
    layer: ChannelLayer,
    width: int | None,
    *,
    stream: Iterator,
    evaluate: Callable,
    masks: Masks,
    held_out: list,
    target: Target,
    candidates: int | None,
    rescale: bool,
    seed: int,
    bar: tqdm,
) -> tuple[LayerPlan, LayerLog]:
    """Greedy forward selection within one layer; leaves the layer masked to its picks."""
    size = layer.width

    def factors(selected: list[int], extra: Sequence[int]) -> torch.Tensor:
        scale = size / (len(selected) + 1) if rescale else 1.0
        keep = torch.zeros(len(extra), size)
        keep[:, selected] = scale
        keep[torch.arange(len(extra)), list(extra)] = scale
        return keep

    def score(selected: list[int], cands: list[int]) -> list[float]:
        inputs, targets = next(stream)
        return evaluate(inputs, targets, layer, factors(selected, cands))

    def held_out_loss(keep: torch.Tensor) -> float:
        return sum(evaluate(x, y, layer, keep)[0] for x, y in held_out) / len(held_out)

    reference = tolerance = monitor = None
    if isinstance(target, Tolerance):
        reference = held_out_loss(torch.ones(1, size))
        tolerance = target.eps * abs(reference)
        monitor = lambda selected: held_out_loss(factors(selected[:-1], selected[-1:]))  # noqa: E731

    def on_pick(step: int, item: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        selection = forward_select(
            score,
            size,
            steps=width,
            tolerance=tolerance,
            reference=reference,
            candidates=candidates,
            seed=seed,
            monitor=monitor,
            callback=on_pick,
        )
    finally:
        bar.close()
    kept = list(selection.order)
    for segment in layer.segments:
        if not set(segment) & set(kept):
            # A concatenated part left empty would leave its module with no output channel:
            # add that part's best channel (one more greedy step, restricted to the part).
            inputs, targets = next(stream)
            losses = evaluate(inputs, targets, layer, factors(kept, segment))
            kept.append(segment[min(range(len(segment)), key=losses.__getitem__)])
    scale = size / len(kept) if rescale else 1.0
    masks.set(layer, kept, scale)
    return (
        LayerPlan(layer.name, size, list(kept), scale),
        LayerLog(layer.name, list(selection.losses), reference),
    )


def _check_equivalent(pruned: nn.Module, example_inputs: object, expected: torch.Tensor) -> None:
    """The pruned network must compute what the masked one did."""
    with torch.no_grad():
        got = run_model(pruned.eval(), example_inputs)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        raise ModelError(
            "The physically pruned model does not compute what the masked model did "
            f"(max difference {float((got - expected).abs().max()):.3g}); the model has an "
            "operation that mixes channels outside Conv/Linear layers. Add the modules "
            "around it to 'ignore'."
        )
