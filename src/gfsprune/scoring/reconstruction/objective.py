"""The reconstruction objective: each layer's items chosen by how well its consumers' outputs
are reproduced, every candidate scored in closed form (issue 29).

Before a layer's selection, one pass over a few fixed calibration batches gathers its
consumers' statistics: inputs from the network pruned so far (so each layer also corrects
the error of the layers before it), targets from the unpruned network
(:mod:`~gfsprune.scoring.reconstruction.gram`). Greedy selection then scores every item at
every step without a pass through the rest of the network
(:mod:`~gfsprune.scoring.reconstruction.paths`); after the choice the consumers' weights are
re-solved by least squares (``refit``). The network's loss stays the judge where asked:
``judge=k`` lets it pick among the reconstruction's ``k`` best candidates at every step, and
the held-out value (what the ``curves`` allocator and a ``Tolerance`` read) is the network's
loss, measured at a few widths along the layer's reconstruction path and interpolated between.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from gfsprune._copying import copy_model
from gfsprune._inputs import move, run_model
from gfsprune.errors import ConfigError
from gfsprune.scoring.loss import NetworkLoss
from gfsprune.scoring.objective import BoundObjective, LayerObjective, Objective, SelectionRun
from gfsprune.scoring.reconstruction.gram import (
    UndescribedConsumer,
    collect_stats,
    unsupported,
)
from gfsprune.scoring.reconstruction.passes import Passes, channels_last, takes_channels_last
from gfsprune.scoring.reconstruction.paths import SCALES, Path, make_path, scorer
from gfsprune.scoring.reconstruction.problem import LayerProblem, Ridge
from gfsprune.surgery import ChannelLayer, batchnorm_after

__all__ = ["Reconstruction"]

_log = logging.getLogger(__name__)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            f"The '{name}' option of Reconstruction must be an integer >= {low}. Got "
            f"{value!r} instead."
        )


@dataclass(frozen=True)
class Reconstruction(Objective):
    """Each layer's consumers' outputs reproduced from its kept items (squared error on
    calibration batches, weighted by the following BatchNorm's scale).

    Attributes:
        scale: The kept items' factor during selection: ``"refit"`` (the consumers re-solved
            by least squares at every step: forward stepwise regression), ``"best"`` (the
            best scalar, in closed form), ``"mean-field"`` (``n / k``, the paper's) or
            ``"one"``. On resnet20 ``"refit"`` kept 97% accuracy at 25% of the MACs where
            ``"best"`` with the refit after the choice kept 94% (docs/RESULTS.md).
        refit: After a layer's choice, re-solve its consumers' weights by least squares on
            the kept inputs, wherever that lowers their error.
        intercept: A consumer without a bias that a BatchNorm follows is re-solved with a
            per-output intercept too (during selection where ``scale="refit"``, and in the
            refit), folded into the BatchNorm's running mean: the removed channels' mean
            contribution is compensated, as a bias would be: a lower least-squares error,
            at the same cost. Measured, it changed nothing beyond the runs' spread
            (EfficientNet-Lite0 40.6-41.0% agreement against 39.5-41.8% without; the small
            benchmarks; docs/RESULTS.md). Pruned to one or two channels per layer, a network
            fitted so may amplify float32 rounding (a mobilenet_v2's outputs moved by 0.1;
            ``prune`` then checks the physical removal in float64 and warns).
        judge: ``0``: the reconstruction alone picks; ``k``: at every step the network's
            loss (on the next mini-batch) picks among the reconstruction's ``k`` best
            candidates.
        batches: Calibration batches (the data's first) the statistics are gathered on; a
            least-squares refit of a linear layer reading a flattened map has as many
            unknowns as inputs, so a few batches overfit it (4 batches of 64 did on digits).
        rows: Calibration rows per consumer and batch, at most: where a batch gives more
            (a convolution's output positions, a sequence model's tokens), that many are
            drawn at random, the same in the pruned and the unpruned network; ``None``: all.
            The statistics' products grow with the rows; the forward passes do not: 8,192
            took resnet18 at 224 from 324 to 282 s, and EfficientNet-Lite0 hardly (its
            consumers have few inputs), with its KL to the unpruned model the same and its
            top-1 agreement 35.5% against 41.0% in one run each (docs/RESULTS.md).
        resume_gib: Memory (GiB, per network: the pruned and the unpruned) for what one
            layer's statistics pass keeps for the next: per calibration batch, the outputs
            of the module calls before the layer's first consumer, which the next layer's
            pass replays while nothing they read has changed (in a chain of layers each
            pass then runs from the previous layer's consumers on, not from the input);
            ``0``: every pass from the input. The statistics are the same either way (bit
            for bit on EfficientNet-Lite0); resumed, EfficientNet-Lite0 took 66 s against
            153 s and a MiniLM-shaped encoder 157 s against 326 s (docs/RESULTS.md).
        points: Widths along each layer's path where the held-out network loss is measured
            (``curves`` and ``Tolerance`` read it; between them it is interpolated).
        ridge: Least-squares damping, relative to the mean squared input; ``"auto"``: 1e-3
            where a consumer has at least 10 calibration rows per unknown (or more than
            4,096 unknowns), else chosen per consumer among 1e-6 to 10 by two-fold
            cross-validation over the calibration batches. On digits ``"auto"`` (1e-2 for
            the classifier, 2,049 unknowns from 1,024 rows) and 1e-1 fine-tuned better than
            1e-3; on EfficientNet-Lite0 ``"auto"`` kept less agreement right after pruning,
            and 1e-1 less accuracy on resnet20 (docs/RESULTS.md).

    Layers with a consumer the statistics cannot describe (other than Linear, Conv1d and
    Conv2d, or with more than 8192 input positions) are selected by the network's loss,
    ``PruneConfig(candidates=...)`` per step (a classifier reading a flattened map, as VGG's,
    is such a consumer: every candidate there costs a pass). The other layers score every
    candidate at each step, and the ``curves`` allocator follows each layer's greedy path:
    ``points`` measurements of the network loss per layer.
    """

    name: ClassVar[str] = "reconstruction"
    closed_form: ClassVar[bool] = True
    scale: str = "refit"
    refit: bool = True
    intercept: bool = True
    judge: int = 0
    batches: int = 16
    rows: int | None = None
    resume_gib: float = field(default=4.0, repr=False)  # the plan does not depend on it
    points: int = 8
    ridge: Ridge = 1e-3

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(
                f"The 'scale' option of Reconstruction must be one of {list(SCALES)}. Got "
                f"{self.scale!r} instead."
            )
        for flag in ("refit", "intercept"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(
                    f"The '{flag}' option of Reconstruction must be True or False. Got "
                    f"{getattr(self, flag)!r} instead."
                )
        _check_int("judge", self.judge, 0)
        _check_int("batches", self.batches, 1)
        _check_int("points", self.points, 2)
        if self.rows is not None:
            _check_int("rows", self.rows, 1)
        g = self.resume_gib
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 <= g < math.inf:
            raise ConfigError(
                "The 'resume_gib' option of Reconstruction must be a finite number >= 0. "
                f"Got {g!r} instead."
            )
        r = self.ridge
        number = isinstance(r, int | float) and not isinstance(r, bool)
        if r != "auto" and not (number and 0 <= r < math.inf):
            raise ConfigError(
                "The 'ridge' option of Reconstruction must be a finite number >= 0 or 'auto'. "
                f"Got {r!r} instead."
            )

    def bind(self, run: SelectionRun) -> _BoundReconstruction:
        return _BoundReconstruction(self, run)


class _BoundReconstruction(BoundObjective):
    def __init__(self, options: Reconstruction, run: SelectionRun) -> None:
        self.options, self.run = options, run
        self.unpruned = copy_model(run.original).to(run.device).eval()
        # the data's first batches, on a pass of their own (the run's stream stays)
        first = itertools.islice(run.data, options.batches)
        self.calibration = [move(tuple(batch), run.device) for batch in first]
        # images channels-last where the model gives the same outputs so (faster on a CPU)
        if self.calibration and takes_channels_last(run.model, self.calibration[0][0]):
            self.calibration = [(channels_last(x), *rest) for x, *rest in self.calibration]
        modules = dict(run.model.named_modules())
        pairs = batchnorm_after(run.model, run.graph, subclasses=True)
        self.norms = {c: modules[n] for c, n in pairs.items()}
        # the BatchNorms' running means in the unpruned network: an intercept's reference
        self.means = {c: self.unpruned.get_submodule(n).running_mean for c, n in pairs.items()}
        self.loss = NetworkLoss().bind(run)  # the judge, and the layers not described
        self._last: _LayerReconstruction | None = None
        budget = int(options.resume_gib * 2**30)
        masked = {run.model.get_submodule(n): n for n in run.masks.consumers}

        def factors(module: torch.nn.Module) -> tuple[torch.Tensor, ...]:
            return (run.masks.input_factors(masked[module]),) if module in masked else ()

        self.passes = Passes(run.model, budget=budget, state=factors)
        self.unpruned_passes = Passes(self.unpruned, budget=budget)

    def _reference(self) -> Passes:
        """The unpruned network's passes, or the network's own where it is still the same
        (nothing masked, no weight changed: the curves' pass), which halves the passes."""
        model = self.run.model
        if not self.run.masks.unmasked:
            return self.unpruned_passes
        mine, theirs = model.state_dict(), self.unpruned.state_dict()
        same = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        return self.passes if same else self.unpruned_passes

    def _problem(self, layer: ChannelLayer) -> LayerProblem | None:
        """``layer``'s problem on the calibration batches, from the network as it is now
        (``None`` where a consumer is not described)."""
        names = sorted({c.name for c in layer.consumers})
        modules = {n: self.run.model.get_submodule(n) for n in names}
        why = [f"'{n}' is {unsupported(m)}" for n, m in modules.items() if unsupported(m)]
        if why:
            _log.info("%s: selected by the network loss (%s)", layer.name, "; ".join(why))
            return None
        try:
            stats = collect_stats(
                self.passes,
                self._reference(),
                names,
                self.calibration,
                folds=self.options.ridge == "auto",
                rows=self.options.rows,
            )
        except UndescribedConsumer as err:
            _log.info("%s: selected by the network loss (%s)", layer.name, err)
            return None
        factors = {n: self.run.masks.input_factors(n) for n in names}
        norms = {n: self.norms[n] for n in names if n in self.norms}
        intercepts = {}
        if self.options.intercept:
            intercepts = {n: self.means[n] for n in norms if modules[n].bias is None}
        return LayerProblem(layer, stats, modules, factors, norms, intercepts)

    def layer(self, layer, *, draw, held_out) -> LayerObjective:
        problem = self._problem(layer)
        if problem is None:
            self._last = None
            return self.loss.layer(layer, draw=draw, held_out=held_out)
        judge = self.loss.layer(layer, draw=draw, held_out=()) if self.options.judge else None
        self._last = _LayerReconstruction(problem, self.options, self.run, held_out, judge)
        return self._last

    def after(self, layer: ChannelLayer) -> None:
        if not self.options.refit:
            return
        masks = self.run.masks
        first = layer.consumers[0]  # every consumer sees the layer's channels alike
        factors = masks.input_factors(first.name)[first.index].cpu()
        channels = sorted(set(first.root[factors != 0].tolist()))
        scale = float(factors[factors != 0][0]) if channels else 1.0
        if self._last is not None and self._last.layer is layer:
            problem = self._last.problem
        else:  # a layer a resumed run restores: its statistics as its selection saw them
            masks.set(layer, range(layer.width), 1.0)
            problem = self._problem(layer)
            masks.set(layer, channels, scale)
        if problem is None:
            return
        items = layer.items_of(channels)
        for consumer, (rows, unknowns) in problem.underdetermined(items).items():
            _log.warning(
                "%s: the refit of '%s' solves %d unknowns per output from %d calibration "
                "rows, which can fit the calibration data and little else; give more "
                "calibration data (Reconstruction(batches=...), larger batches) or "
                "Reconstruction(ridge='auto').",
                layer.name,
                consumer,
                unknowns,
                rows,
            )
        if problem.refit(items, scale, ridge=self.options.ridge):
            self.loss.reset()  # the evaluator's copy of the network is stale

    def reset(self) -> None:
        self.loss.reset()


class _LayerReconstruction(LayerObjective):
    """One layer's reconstruction error (float64, on fixed batches: no mini-batch per step)."""

    closed_form = True

    def __init__(
        self,
        problem: LayerProblem,
        options: Reconstruction,
        run: SelectionRun,
        held_out: Sequence[tuple],
        judge: LayerObjective | None,
    ) -> None:
        self.layer, self.problem, self.options, self.run = problem.layer, problem, options, run
        self._held_out, self._judge = held_out, judge
        self._added = scorer(self._fresh)
        self._judged: list[int] = []  # the candidates the judge scored at the last step
        self._path: list[int] | None = None  # the pure greedy order over all items
        self._steps: list[torch.Tensor] = []  # every item's error at each step of that path
        self._measured: dict[int, float] = {}  # held-out loss at widths along that path

    def _fresh(self) -> Path:
        return make_path(self.problem, self.options.scale, ridge=self.options.ridge)

    def _along(self, items: Sequence[int]) -> Path:
        path = self._fresh()
        for item in items:
            path.add(item)
        return path

    def score(self, sets):
        return [self._along(items).error for items in sets]

    def _errors(self, selected: list[int], candidates: list[int]) -> list[float]:
        """Each candidate's error added to ``selected``; read off the full path where it
        was computed (for the held-out value) and ``selected`` follows it."""
        k = len(selected)
        if self._path is not None and k < len(self._steps) and selected == self._path[:k]:
            return self._steps[k][candidates].tolist()
        return self._added(selected, candidates)

    def score_added(self, selected, candidates):
        errors = self._errors(list(selected), list(candidates))
        if self._judge is None:
            return errors
        ranked = sorted(zip(errors, candidates, strict=True))[: self.options.judge]
        self._judged = [c for _, c in ranked]
        scored = self._judge.score_added(selected, self._judged)
        losses = dict(zip(self._judged, scored, strict=True))
        return [losses.get(c, math.inf) for c in candidates]

    def refine_added(self, selected, candidates):
        if self._judge is None:
            return self.score_added(selected, candidates)
        judged = [c for c in candidates if c in self._judged]
        losses = dict(zip(judged, self._judge.refine_added(selected, judged), strict=True))
        return [losses.get(c, math.inf) for c in candidates]

    def screen(self, selected, allowed, count):
        errors = self._errors(list(selected), list(allowed))
        return [c for _, c in sorted(zip(errors, allowed, strict=True))[:count]]

    def scale(self, channels):
        if self.options.scale == "mean-field":
            return self.layer.width / len(channels)
        if self.options.scale == "best":
            return self._along(self.layer.items_of(channels)).scale
        return 1.0

    def held_out(self, items):
        """The network's loss on the held-out batches: measured at ``points`` widths along
        the layer's reconstruction path and interpolated between them where ``items`` is a
        prefix of that path; measured directly otherwise."""
        items = list(items)
        n = self.layer.n_items
        if self._path is None:
            self._path = self._fresh_order()
        if set(items) != set(self._path[: len(items)]):
            return self._measure(items)
        grid = np.unique(np.round(np.linspace(1, n, self.options.points)).astype(int))
        k = len(items)
        low = int(grid[grid <= k].max()) if (grid <= k).any() else k
        high = int(grid[grid >= k].min())
        for width in {low, high}:
            if width not in self._measured:
                self._measured[width] = self._measure(self._path[:width])
        if low == high:
            return self._measured[low]
        t = (k - low) / (high - low)
        return (1 - t) * self._measured[low] + t * self._measured[high]

    def _fresh_order(self) -> list[int]:
        """The pure greedy order over all items (each step's errors kept in ``_steps``)."""
        path = self._fresh()
        for _ in range(self.layer.n_items):
            errors = path.errors()
            self._steps.append(errors)
            path.add(int(torch.argmin(errors)))
        return path.selected

    def _measure(self, items: Sequence[int]) -> float:
        """The mean network loss over the held-out batches with ``items`` kept (at this
        objective's factor, the consumers refit for them where ``refit`` is on)."""
        if not self._held_out:
            raise ConfigError("this run gave the objective no held-out batches to measure on")
        channels = self.layer.channels(items)
        keep = torch.zeros(1, self.layer.width)
        if channels:
            keep[0, channels] = self.scale(channels)
        run = self.run
        with self._refit_for(items, float(keep.max())), run.masks.candidates(self.layer, keep):
            with torch.no_grad():
                losses = [float(run.loss_fn(run_model(run.model, x), y)) for x, y in self._held_out]
        return sum(losses) / len(losses)

    @contextlib.contextmanager
    def _refit_for(self, items: Sequence[int], scale: float) -> Iterator[None]:
        """The consumers refit for ``items`` for a while (where ``refit`` is on)."""
        if not self.options.refit or not items:
            yield
            return
        touched = [*self.problem.modules.values(), *self.problem.norms.values()]
        saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in touched]
        try:
            self.problem.refit(items, scale, ridge=self.options.ridge)
            yield
        finally:
            for module, state in zip(touched, saved, strict=True):
                module.load_state_dict(state)
