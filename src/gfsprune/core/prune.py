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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gfsprune import distributed
from gfsprune._copying import copy_model
from gfsprune._inputs import model_device, move, run_model
from gfsprune.core.allocate import WidthAllocator, allowed_widths, check_reachable
from gfsprune.core.config import PruneConfig
from gfsprune.core.cost import CostModel
from gfsprune.core.counting import count
from gfsprune.core.curves import LossCurve, measure_curves
from gfsprune.core.eta import RunClock
from gfsprune.core.refit import refit_consumers
from gfsprune.core.schedules import Fast
from gfsprune.core.strategies import LayerSearch, select_layer
from gfsprune.core.stream import BatchStream
from gfsprune.core.tuning import tune
from gfsprune.errors import ConfigError, DataError, ModelError, first_line
from gfsprune.io.progress import read_progress, write_progress
from gfsprune.plan import LayerLog, LayerPlan, PruneResult
from gfsprune.scoring import make_evaluator
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
from gfsprune.targets import Budget, Goal, Target

__all__ = ["prune"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The tolerance rule compares losses on a fixed set of batches (the paper uses a fixed
# training subset); picks are still scored on the fresh batches that follow.
_HELD_OUT_BATCHES = 4


class _Context:
    """What targets may ask of the run (:class:`gfsprune.targets.TargetContext`): the layers,
    and the cost model and allocator behind a budget (the cost model built on first use)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object,
        layers: Sequence[ChannelLayer],
        allocator: WidthAllocator,
        round_to: int,
    ) -> None:
        self.names = [layer.name for layer in layers]
        self.widths = [layer.width for layer in layers]
        self._sizes = [layer.item_size for layer in layers]
        self.round_to = round_to
        self._model, self._inputs, self._layers = model, example_inputs, layers
        self._allocator = allocator
        self._cost: CostModel | None = None
        #: Measures the layers' loss curves (set by ``prune`` once the masks are on), for
        #: an allocator that needs them; measured on first use.
        self.measure_curves: Callable[[], list[LossCurve]] | None = None
        self._curves: list[LossCurve] | None = None

    @property
    def cost(self) -> CostModel:
        if self._cost is None:
            self._cost = CostModel(self._model, self._inputs, self._layers)
        return self._cost

    def check_budget(self, budget: Budget) -> None:
        check_reachable(self.cost, budget, round_to=self.round_to)

    @property
    def needs_curves(self) -> bool:
        """Whether the allocator measures the layers' loss curves first."""
        return self._allocator.needs_curves

    @property
    def curves(self) -> list[LossCurve] | None:
        """The layers' loss curves where the allocator needs them (measured once)."""
        if self._allocator.needs_curves and self._curves is None:
            assert self.measure_curves is not None, "prune() sets measure_curves first"
            self._curves = self.measure_curves()
        return self._curves

    def allocate(self, budget: Budget, selected: Mapping[int, Sequence[int]]) -> list[int]:
        extra = {"curves": self.curves} if self._allocator.needs_curves else {}
        widths = self._allocator.allocate(
            self.cost, budget, selected, round_to=self.round_to, **extra
        )
        for i, (width, full, size) in enumerate(zip(widths, self.widths, self._sizes, strict=True)):
            if i not in selected and width not in allowed_widths(full, self.round_to, size):
                raise ModelError(
                    f"The {self._allocator.name!r} allocator gave layer '{self.names[i]}' "
                    f"{width} of {full} channels, not a multiple of round_to={self.round_to} "
                    f"and of its item size {size} (or the full width); fix the allocator."
                )
        return widths


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
            its starting value), or ``Widths({layer: n})`` (exact widths).
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
    strategy, schedule = config.make_strategy(), config.make_schedule()
    if strategy.needs_width and not target.sized:
        raise ConfigError(
            f"The '{strategy.name}' strategy needs a size target (Macs, Params or Widths); "
            f"got {target!r}."
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = _device(model, config.device)
    work = copy_model(model).to(device).eval()
    example_inputs = move(example_inputs, device)
    modules = dict(work.named_modules())
    ignored = [modules[n] for n in _resolve_ignore(model, ignore)]
    graph = build_graph(work, example_inputs)
    layers, skipped = find_layers(work, example_inputs, ignore=ignored, graph=graph)
    layers, unsafe = removable_layers(work, example_inputs, layers, seed=config.seed)
    skipped = skipped + unsafe
    if not layers:
        raise ModelError(
            f"{type(model).__name__} has no prunable channel layer (every group is ignored, "
            "feeds the output directly, or cannot be masked exactly)."
        )
    macs_before, params_before = count(work, example_inputs)
    context = _Context(work, example_inputs, layers, config.make_allocator(), config.round_to)
    goals = target.plan(context)
    settings = {
        "model": type(model).__name__,
        "layers": [[layer.name, layer.width] for layer in layers],
        "target": repr(target),
        **config.settings(),
    }
    # Each step draws one batch; a layer takes at most items + segments steps.
    max_drawn = _HELD_OUT_BATCHES + sum(1 + layer.n_items + len(layer.segments) for layer in layers)
    saved = read_progress(
        checkpoint, settings, [(layer.name, layer.width) for layer in layers], max_drawn=max_drawn
    )

    stream = BatchStream(data, device, seed=config.seed, name="main")
    first = stream.next()
    _check_first_batch(work, first, loss_fn)
    held_out = []
    if not target.sized:
        held_out = [first] + [stream.next() for _ in range(_HELD_OUT_BATCHES - 1)]
    plan, logs = saved.plan, saved.logs
    stream.skip_to(saved.drawn)

    with Masks(work, layers) as masks:
        evaluator = make_evaluator(config.evaluator_class(), work, masks, loss_fn, graph=graph)

        # The curves pass (where the allocator measures them) then the selection pass: their
        # bars are named apart, and say how long the whole run has left.
        screen = min(Fast.screen, config.candidates or Fast.screen)
        passes = ("curves", "select") if target.sized and context.needs_curves else ("select",)
        clock = RunClock(
            [
                layer.n_items * (screen if name == "curves" else config.candidates or layer.n_items)
                for name in passes
                for layer in layers
            ]
        )

        def search_of(index: int, total: int | None, phase: str, **options) -> LayerSearch:
            layer = layers[index]
            position = passes.index(phase) * len(layers) + index
            return LayerSearch(
                layer=layer,
                evaluator=evaluator,
                candidates=config.candidates,
                tie=config.tie,
                rescale=config.rescale,
                seed=config.seed + index,
                bar=tqdm(
                    total=total or layer.n_items,
                    desc=f"{phase} [{index + 1}/{len(layers)}] {layer.name}" + clock.left(position),
                    disable=not progress or not distributed.is_main(),
                    leave=False,
                ),
                **options,
            )

        def curves() -> list[LossCurve]:
            # Before any layer is pruned, on its own pass over the data, so that the main
            # stream (and a resumed run's position in it) is unchanged.
            own = BatchStream(data, device, seed=config.seed, name="curves")
            batches = [own.next() for _ in range(_HELD_OUT_BATCHES)]
            # The fast schedule, scoring no more candidates per step than the run itself.
            return measure_curves(
                search_of(
                    i, None, "curves", stream=own, schedule=Fast(screen=screen), held_out=batches
                )
                for i in range(len(layers))
            )

        context.measure_curves = curves
        if target.sized:
            context.curves  # noqa: B018 (measured now, before any layer is restored or pruned)
        if config.refit:
            unpruned = copy_model(model).to(device).eval()
            own = BatchStream(data, device, seed=config.seed, name="refit")
            calibration = [own.next() for _ in range(_HELD_OUT_BATCHES)]
        # its own pass: the main stream stays as it was
        tuning = BatchStream(data, device, seed=config.seed, name="tuning")

        def finish(layer: ChannelLayer) -> None:
            """After a layer's choice: refit its consumers, fine-tune. Both are repeatable
            (fixed batches, in order), so a resumed run redoes the finished layers' to the
            same weights (on a CPU; GPU kernels may differ in the last bits)."""
            if config.refit:
                refit_consumers(work, unpruned, layer, masks, calibration, loss_fn)
            if config.tuning is not None:
                tune(work, tuning, loss_fn, config.tuning)
            if config.refit or config.tuning is not None:
                evaluator.reset()

        for layer, done in zip(layers, plan, strict=False):
            masks.set(layer, done.kept, done.scale)
            finish(layer)
        for index in range(len(plan), len(layers)):
            layer = layers[index]
            goal = _in_items(goals(index, {i: p.kept for i, p in enumerate(plan)}), layer)
            search = search_of(
                index, goal.width, "select", stream=stream, schedule=schedule, held_out=held_out
            )
            choice, scale = select_layer(strategy, search, goal, masks)
            finish(layer)
            plan.append(LayerPlan(layer.name, layer.width, choice.kept, scale))
            logs.append(LayerLog(layer.name, choice.losses, choice.reference))
            if checkpoint is not None and distributed.is_main():
                write_progress(checkpoint, settings, plan, logs, stream.drawn)

    kept, scales = {p.name: p.kept for p in plan}, {p.name: p.scale for p in plan}
    norms = batchnorm_after(work, graph) if config.rescale_into == "batchnorm" else None
    pruned = prune_channels(work, example_inputs, kept, scales=scales, layers=layers, norms=norms)
    difference = removal_difference(
        work, pruned, example_inputs, layers, kept, scales, held=norms or ()
    )
    if difference is not None:
        raise ModelError(
            f"The physically pruned model does not compute what the masked model did "
            f"({difference}); the model has an operation that depends on its channel counts "
            "outside Conv/Linear layers. Add the modules around it to 'ignore'."
        )
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
