"""``prune``: greedy forward selection of channels, layer by layer, into a smaller network.

The deep version of Ye et al. (ICML 2020), as its official code runs it: layers are visited
from input to output; within a layer every channel starts off and, at each step, up to
``candidates`` not-yet-kept channels are scored by the loss of the whole network on a fresh
mini-batch with the layer restricted to the kept channels plus the candidate; the best one is
kept. The flow of one call is described in ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gfsprune import distributed
from gfsprune._copying import copy_model
from gfsprune._inputs import model_device, move, run_model
from gfsprune.core.compute_cost import ComputeCost
from gfsprune.core.config import PruneConfig
from gfsprune.core.cost import CostModel
from gfsprune.core.counting import count
from gfsprune.core.curves import LossCurve, measure_curve
from gfsprune.core.eta import RunClock
from gfsprune.core.planner import WidthPlanner
from gfsprune.core.refit import refit_consumers
from gfsprune.core.schedules import Schedule
from gfsprune.core.strategies import LayerChoice, LayerSearch, select_layer
from gfsprune.core.stream import BatchStream
from gfsprune.core.tuning import tune
from gfsprune.errors import ConfigError, DataError, ModelError, first_line
from gfsprune.io.progress import read_progress, write_progress
from gfsprune.plan import LayerLog, LayerPlan, PruneResult
from gfsprune.scoring import BoundObjective, LayerObjective, SelectionRun
from gfsprune.surgery import (
    ChannelLayer,
    Masks,
    batchnorm_after,
    build_graph,
    find_layers,
    prune_channels,
    removable_layers,
    removal_difference,
)
from gfsprune.targets import Goal, Target

__all__ = ["prune"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The tolerance rule compares losses on a fixed set of batches (the paper uses a fixed
# training subset); picks are still scored on the fresh batches that follow. The curves pass
# and the refit read as many batches of their own pass over the data.
_HELD_OUT_BATCHES = 4


def prune(
    model: nn.Module,
    data: Iterable,
    example_inputs: object,
    *,
    target: Target,
    config: PruneConfig | None = None,
    loss_fn: LossFn | None = None,
    ignore: Sequence[nn.Module | str] = (),
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` by greedy forward selection of channels.

    Args:
        model: Any network Torch-Pruning can trace; it is not modified.
        data: Re-iterable ``(inputs, targets)`` mini-batches (inputs: a tensor, tuple or
            dict); each greedy step draws the next.
        example_inputs: Inputs for tracing and counting (a tensor, tuple or dict).
        target: ``Macs(r)`` or ``Params(r)`` (fraction of the original cost to keep, split
            into per-layer widths by ``config.allocator``), ``Tolerance(eps)`` (per layer,
            add channels until the loss on a fixed held-out batch set is within ``eps`` of
            its starting value), ``Widths({layer: n})`` (exact widths), or another
            :class:`~gfsprune.targets.Target` (a budget on any metric of its cost model).
        config: The selection options (:class:`PruneConfig`; default ``PruneConfig()``).
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch; defaults to
            cross-entropy. It may ignore ``targets`` (e.g. distillation to a teacher).
        ignore: Modules (or their qualified names) whose channel groups are left untouched.
        checkpoint: A JSON file updated after every layer; if it exists, the finished layers
            are restored from it and the run continues where it stopped, to the same plan
            and weights. Every pass over ``data`` draws under its own seeded state of torch's
            global generator, so a DataLoader shuffling without a ``generator`` of its own
            and random augmentations repeat too (one with its own generator does not).
        progress: Show a progress bar per layer.

    The stages (docs/ARCHITECTURE.md): **prepare** (copy, trace, find the layers, build the
    cost model), **plan widths** (a :class:`~gfsprune.core.planner.WidthPlanner`: the target
    checked, loss curves measured where a budget's allocator needs them, each layer's goal
    re-planned with the picks so far), **select** layer by layer (the objective, the strategy
    and its schedule; then the corrective steps), **remove, verify, count**.

    Under ``torch.distributed`` (e.g. ``torchrun``), every process must be given the same
    data in the same order: the candidates of each step are split across the processes and
    their losses gathered, so all make the same picks, and the plan equals a single-process
    run's. Only rank 0 shows progress and writes the checkpoint.

    Returns:
        The smaller model, the plan and the costs before and after.

    Example:
        >>> from gfsprune.models import get
        >>> from gfsprune.targets import Macs
        >>> net = get("digits_cnn")
        >>> x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        >>> result = prune(net, [(x, y)], x[:1], target=Macs(0.5), progress=False)
        >>> 0.48 <= result.macs_ratio <= 0.52
        True
    """
    config = config if config is not None else PruneConfig()
    _check_arguments(model, data, target, config)
    loss_fn = loss_fn or nn.functional.cross_entropy

    # 1. Prepare: the working copy, its graph and channel layers, the cost model.
    run = _Prepared(model, example_inputs, target, config, ignore)
    # 2. Plan widths: the target checked before any batch is drawn.
    planner = WidthPlanner(run.layers, run.cost, config.make_allocator(), config.round_to)
    planner.start(target)
    settings = {
        "model": type(model).__name__,
        "layers": [[layer.name, layer.width] for layer in run.layers],
        "target": repr(target),
        **config.settings(),
    }
    # Each step draws one batch; a layer takes at most items + segments steps.
    max_drawn = _HELD_OUT_BATCHES + sum(
        1 + layer.n_items + len(layer.segments) for layer in run.layers
    )
    saved = read_progress(
        checkpoint,
        settings,
        [(layer.name, layer.width) for layer in run.layers],
        max_drawn=max_drawn,
    )
    stream = BatchStream(data, run.device, seed=config.seed, name="main")
    first = stream.next()
    _check_first_batch(run.work, first, loss_fn)
    held_out = []
    if not target.sized:
        held_out = [first] + [stream.next() for _ in range(_HELD_OUT_BATCHES - 1)]
    stream.skip_to(saved.drawn)

    with Masks(run.work, run.layers) as masks:
        selection = SelectionRun(
            model=run.work,
            original=model,
            masks=masks,
            loss_fn=loss_fn,
            graph=run.graph,
            data=data,
            device=run.device,
            rescale=config.rescale,
        )
        options = config.make_objective()
        objective = options.bind(selection)
        # a closed-form objective scores every candidate of a step at once
        candidates = None if options.closed_form else config.candidates
        curve_schedule = None
        if WidthPlanner.needs_curves(target, planner.allocator):
            curve_schedule = planner.allocator.curve_schedule(
                candidates, closed_form=options.closed_form
            )
        selector = _Selector(
            objective, config, candidates, run, masks, data, progress, curve_schedule
        )
        if curve_schedule is not None:
            # Before any layer is restored or pruned, on its own pass over the data, so that
            # the main stream (and a resumed run's position in it) is unchanged.
            planner.use_curves(selector.curves(curve_schedule))
        # 3. Select, layer by layer (a resumed run restores its finished layers first), each
        #    choice followed by the corrective steps.
        correct = _Corrections(objective, config, run, masks, data, loss_fn)
        plan, logs = saved.plan, saved.logs
        for layer, done in zip(run.layers, plan, strict=False):
            masks.set(layer, done.kept, done.scale)
            correct(layer)
        for index in range(len(plan), len(run.layers)):
            layer = run.layers[index]
            goal = _in_items(planner.goal(index, {i: p.kept for i, p in enumerate(plan)}), layer)
            choice, scale = selector.select(index, goal, stream=stream, held_out=held_out)
            correct(layer)
            plan.append(LayerPlan(layer.name, layer.width, choice.kept, scale))
            logs.append(LayerLog(layer.name, choice.losses, choice.reference))
            if checkpoint is not None and distributed.is_main():
                write_progress(checkpoint, settings, plan, logs, stream.drawn)

    # 4. Remove the channels, verify the smaller model, count.
    return _remove(run, plan, logs, config)


class _Prepared:
    """The prepare stage's output: the working copy and what was found in it."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object,
        target: Target,
        config: PruneConfig,
        ignore: Sequence[nn.Module | str],
    ) -> None:
        self.device = _device(model, config.device)
        self.work = work = copy_model(model).to(self.device).eval()
        self.inputs = inputs = move(example_inputs, self.device)
        modules = dict(work.named_modules())
        ignored = [modules[n] for n in _resolve_ignore(model, ignore)]
        self.graph = build_graph(work, inputs)
        layers, skipped = find_layers(work, inputs, ignore=ignored, graph=self.graph)
        self.layers, unsafe = removable_layers(work, inputs, layers, seed=config.seed)
        self.skipped = skipped + unsafe
        if not self.layers:
            raise ModelError(
                f"{type(model).__name__} has no prunable channel layer (every group is "
                "ignored, feeds the output directly, or cannot be masked exactly)."
            )
        self.original = model
        self.cost = (target.cost_model() or ComputeCost)(work, inputs, self.layers)
        self.before = _measured(self.cost, work, inputs)


class _Selector:
    """The select stage: each layer's search (its objective, the strategy and its schedule)."""

    def __init__(
        self,
        objective: BoundObjective,
        config: PruneConfig,
        candidates: int | None,
        run: _Prepared,
        masks: Masks,
        data: Iterable,
        progress: bool,
        curve_schedule: Schedule | None,
    ) -> None:
        self.objective, self.config, self.run, self.masks = objective, config, run, masks
        self.candidates = candidates  # per step (None: all), for the clock's estimate
        self.data, self.progress = data, progress
        self.strategy, self.schedule = config.make_strategy(), config.make_schedule()
        # The curves pass (where the allocator measures them) then the selection pass: their
        # bars are named apart, and say how long the whole run has left (candidates scored
        # per step as the measure of a step's work).
        self.passes = ("select",) if curve_schedule is None else ("curves", "select")
        per_step = {
            "curves": getattr(curve_schedule, "screen", None) or candidates,
            "select": candidates,
        }
        self.clock = RunClock(
            [
                layer.n_items * (per_step[phase] or layer.n_items)
                for phase in self.passes
                for layer in run.layers
            ]
        )

    def _layer(
        self,
        index: int,
        phase: str,
        *,
        stream: BatchStream,
        held_out: Sequence[tuple],
        total: int | None,
    ) -> tuple[LayerObjective, tqdm]:
        """Layer ``index``'s objective, built now (before its selection), and its bar."""
        layer, count = self.run.layers[index], len(self.run.layers)
        objective = self.objective.layer(layer, draw=stream.next, held_out=held_out)
        left = self.clock.left(self.passes.index(phase) * count + index)
        bar = tqdm(
            total=total or layer.n_items,
            desc=f"{phase} [{index + 1}/{count}] {layer.name}{left}",
            disable=not self.progress or not distributed.is_main(),
            leave=False,
        )
        return objective, bar

    def curves(self, schedule: Schedule) -> list[LossCurve]:
        """Every layer's loss curve, every other layer at full width, on a pass of its own
        over the data (its first batches held out)."""
        own = BatchStream(self.data, self.run.device, seed=self.config.seed, name="curves")
        batches = [own.next() for _ in range(_HELD_OUT_BATCHES)]
        curves = []
        for index in range(len(self.run.layers)):
            objective, bar = self._layer(index, "curves", stream=own, held_out=batches, total=None)
            curves.append(
                measure_curve(
                    objective,
                    schedule=schedule,
                    candidates=self._candidates(objective),
                    tie=self.config.tie,
                    seed=self.config.seed + index,
                    bar=bar,
                )
            )
        return curves

    def select(
        self, index: int, goal: Goal, *, stream: BatchStream, held_out: Sequence[tuple]
    ) -> tuple[LayerChoice, float]:
        """Layer ``index``'s choice for ``goal`` (in items), left on the masks."""
        objective, bar = self._layer(
            index, "select", stream=stream, held_out=held_out, total=goal.width
        )
        config = self.config
        search = LayerSearch(
            objective,
            self.schedule,
            self._candidates(objective),
            config.tie,
            config.seed + index,
            bar,
        )
        return select_layer(self.strategy, search, goal, self.masks)

    def _candidates(self, objective: LayerObjective) -> int | None:
        """Candidates per step for a layer: all where its objective is in closed form."""
        return None if objective.closed_form else self.config.candidates


class _Corrections:
    """What follows each layer's choice: the objective's own step, the refit of the layer's
    consumers, the fine-tuning. All are repeatable (fixed batches, in order), so a resumed
    run redoes the finished layers' to the same weights (on a CPU; GPU kernels may differ in
    the last bits)."""

    def __init__(
        self,
        objective: BoundObjective,
        config: PruneConfig,
        run: _Prepared,
        masks: Masks,
        data: Iterable,
        loss_fn: LossFn,
    ) -> None:
        self.objective, self.config, self.run, self.masks = objective, config, run, masks
        self.loss_fn = loss_fn
        if config.refit:
            self.unpruned = copy_model(run.original).to(run.device).eval()
            own = BatchStream(data, run.device, seed=config.seed, name="refit")
            self.calibration = [own.next() for _ in range(_HELD_OUT_BATCHES)]
        # its own pass: the main stream stays as it was
        self.tuning = BatchStream(data, run.device, seed=config.seed, name="tuning")

    def __call__(self, layer: ChannelLayer) -> None:
        config, work = self.config, self.run.work
        self.objective.after(layer)
        if config.refit:
            refit_consumers(work, self.unpruned, layer, self.masks, self.calibration, self.loss_fn)
        if config.tuning is not None:
            tune(work, self.tuning, self.loss_fn, config.tuning)
        if config.refit or config.tuning is not None:
            self.objective.reset()


def _remove(
    run: _Prepared, plan: list[LayerPlan], logs: list[LayerLog], config: PruneConfig
) -> PruneResult:
    """The remove stage: the channels physically removed, the smaller model checked against
    the masked one, its metrics counted."""
    work, inputs, layers = run.work, run.inputs, run.layers
    kept, scales = {p.name: p.kept for p in plan}, {p.name: p.scale for p in plan}
    norms = batchnorm_after(work, run.graph) if config.rescale_into == "batchnorm" else None
    pruned = prune_channels(work, inputs, kept, scales=scales, layers=layers, norms=norms)
    difference = removal_difference(work, pruned, inputs, layers, kept, scales, held=norms or ())
    if difference is not None:
        raise ModelError(
            f"The physically pruned model does not compute what the masked model did "
            f"({difference}); the model has an operation that depends on its channel counts "
            "outside Conv/Linear layers. Add the modules around it to 'ignore'."
        )
    after = _measured(run.cost, pruned, inputs)
    return PruneResult(
        model=pruned,
        plan=plan,
        layers=logs,
        macs_before=int(run.before["macs"]),
        macs_after=int(after["macs"]),
        params_before=int(run.before["params"]),
        params_after=int(after["params"]),
        example_inputs=inputs,
        skipped=run.skipped,
        metrics_before=run.before,
        metrics_after=after,
    )


def _measured(cost: CostModel, model: nn.Module, inputs: object) -> dict[str, float]:
    """Every metric of the cost model on ``model``, and its MACs and parameters (counted
    where the cost model does not give them)."""
    metrics = dict(cost.measure(model, inputs))
    if "macs" not in metrics or "params" not in metrics:
        macs, params = count(model, inputs)
        metrics = {"macs": macs, "params": params, **metrics}
    return metrics


def _check_arguments(model: nn.Module, data: Iterable, target: Target, config: PruneConfig) -> None:
    if not isinstance(target, Target):
        raise ConfigError(
            "'target' must be gfsprune.Macs(ratio), gfsprune.Params(ratio), "
            f"gfsprune.Tolerance(eps), gfsprune.Widths({{...}}) or another gfsprune Target. "
            f"Got {target!r} instead."
        )
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"'config' must be a gfsprune.PruneConfig. Got {config!r} instead.")
    if isinstance(data, Iterator):  # one pass only; the steps, curves and refits read it anew
        raise DataError(
            f"'data' must be re-iterable (a DataLoader or a list), not a "
            f"{type(data).__name__}: each pass over it must start again at its first batch."
        )
    if isinstance(model, torch.jit.ScriptModule):  # no hooks, no module graph to cut
        raise ModelError(
            f"'model' is a TorchScript module ({type(model).__name__}, from torch.jit.script "
            "or torch.jit.trace), which gfsprune cannot trace or cut; pass the nn.Module it "
            "was made from."
        )
    if type(model).__module__.startswith("transformers."):
        raise ConfigError(
            f"'model' is a transformers {type(model).__name__}, which returns a ModelOutput "
            "and may hold Conv1D layers; pass gfsprune.models.hf.prepare(model) instead "
            "(hf:DIR models come prepared)."
        )
    if target.sized and not target.allocated and config.round_to != 1:
        raise ConfigError(
            f"round_to={config.round_to} rounds the widths of a budget or Tolerance; "
            f"{type(target).__name__} widths are taken as given: leave round_to out."
        )
    strategy = config.make_strategy()
    if strategy.needs_width and not target.sized:
        raise ConfigError(
            f"The '{strategy.name}' strategy needs a size target (Macs, Params or Widths); "
            f"got {target!r}."
        )


def _in_items(goal: Goal, layer: ChannelLayer) -> Goal:
    """``goal`` (widths in channels) counted in the items of ``layer``."""
    size = layer.item_size
    if size == 1:
        return goal
    if goal.width is not None and goal.width % size:
        raise ConfigError(
            f"Layer '{layer.name}' is selected in items of {size} channels (attention heads, "
            f"or offsets of a grouped convolution); its width must be a multiple of {size}. "
            f"Got {goal.width}."
        )
    return Goal(
        width=None if goal.width is None else goal.width // size,
        tolerance=goal.tolerance,
        multiple_of=goal.multiple_of // math.gcd(goal.multiple_of, size),
    )


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or the device of the model's parameters (the CPU for a model with none)."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"The device {str(device)!r} was asked for, but CUDA is not available here; "
                "use the CPU."
            )
        return device
    return model_device(model)


def _check_first_batch(model: nn.Module, batch: tuple, loss_fn: LossFn) -> float:
    inputs, targets = batch
    try:
        with torch.no_grad():
            loss = float(loss_fn(run_model(model, inputs), targets))
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as err:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        reason = first_line(err) or type(err).__name__
        raise DataError(
            f"The model and loss could not run on the first mini-batch (inputs {shape}): "
            f"{reason}. Check that the data's shape and labels match the model and "
            "example_inputs."
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
