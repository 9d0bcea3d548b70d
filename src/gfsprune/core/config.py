"""``PruneConfig``: every option of a pruning run besides the target, documented once.

The API (:func:`gfsprune.prune`), the command line's jobs and ``compare`` all pass this one
object. Each extension axis takes a name or an instance of its protocol:

- ``strategy``: a :class:`~gfsprune.core.strategies.Strategy` (``"forward"``, ``"backward"``);
- ``allocator``: a :class:`~gfsprune.core.allocate.WidthAllocator` (``"curves"``, ``"uniform"``);
- ``evaluator``: a :class:`~gfsprune.scoring.Evaluator` subclass (``"batched"``, ``"naive"``);
- ``schedule``: a :class:`~gfsprune.core.schedules.Schedule` (``"exact"``, ``"fast"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from gfsprune.core.allocate import ALLOCATORS, WidthAllocator
from gfsprune.core.schedules import SCHEDULES, Exact, Schedule
from gfsprune.core.strategies import STRATEGIES, Strategy
from gfsprune.core.tuning import LayerTuning
from gfsprune.errors import ConfigError
from gfsprune.scoring import EVALUATORS, OBJECTIVES, Evaluator, NetworkLoss, Objective

__all__ = ["CHOICES", "GROUPS", "RESCALE_INTO", "PruneConfig", "option_docs"]

#: Where ``PruneConfig(rescale_into=...)`` may put the rescale's factor.
RESCALE_INTO = ("batchnorm", "weights")

_T = TypeVar("_T")


def _resolve(option: str, value: object, registry: Mapping[str, type[_T]], base: type) -> _T:
    """``value`` as an instance of ``base``: a registered name is instantiated, an instance
    passes through."""
    if isinstance(value, str):
        if value not in registry:
            raise ConfigError(
                f"The '{option}' option of PruneConfig must be one of {sorted(registry)} or a "
                f"{base.__name__} instance. Got {value!r} instead."
            )
        return registry[value]()
    if isinstance(value, base):
        return value  # type: ignore[return-value]
    raise ConfigError(
        f"The '{option}' option of PruneConfig must be one of {sorted(registry)} or a "
        f"{base.__name__} instance. Got {value!r} instead."
    )


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """How :func:`gfsprune.prune` selects channels.

    The options by concern (:data:`GROUPS`): how each layer's items are chosen (``strategy``,
    ``schedule``, ``candidates``, ``tie``, ``seed``), what that choice minimises
    (``objective``, ``evaluator``), how a budget becomes widths (``allocator``,
    ``round_to``), the mean-field factor (``rescale``, ``rescale_into``), what follows each
    layer's choice (``refit``, ``tuning``) and where it runs (``device``).

    Attributes:
        strategy: ``"forward"`` (greedy forward selection, the paper), ``"backward"``
            (greedy backward elimination by loss; needs a size target), or a ``Strategy``.
        schedule: How forward selection steps: ``"exact"`` (the paper's rule: one pick per
            step among ``candidates`` random channels, each scored by its loss) or
            ``"fast"`` (a first-order screen picks the channels worth scoring, and several
            are added per step once a layer has some), or a ``Schedule``. Backward
            elimination only runs exactly.
        candidates: Channels scored per greedy step, a seeded random subset of those not yet
            kept (``None``: all). The official code scores 50. A fast schedule's screen
            replaces it except where that schedule scores at random (``Fast(screen=None)``,
            its exact warm-up); it also caps the screen of the ``curves`` allocator's pass.
            An objective in closed form (``"reconstruction"``) scores every channel anyway,
            except in the layers it leaves to the network loss.
        tie: Candidates whose losses are within this relative distance of the step's best
            are a tie, won by the lowest channel index; where a gap lies near ``tie`` itself
            the candidates near the best are scored again in float64 and decide
            (:func:`~gfsprune.core.select.rank`). The evaluators agree to about 1e-6 (float32
            on a CPU; docs/RESULTS.md), so with the default 1e-5 the plan does not depend on
            the arithmetic path (evaluator, torch version, CPU kernels); GPUs with TF32
            convolutions differ by up to about 1e-3 (use 4e-3 there). 0: the lowest loss
            always wins.
        seed: Seeds the candidate sampling (layer ``i`` uses ``seed + i``).
        objective: What each layer's selection minimises: ``"reconstruction"`` (its
            consumers' outputs reproduced from the kept channels, every channel scored in
            closed form from one pass of statistics per layer, the consumers re-solved by
            least squares: :class:`~gfsprune.scoring.Reconstruction`), ``"loss"`` (the
            network's loss on a fresh mini-batch per step, through ``evaluator``: the paper's
            rule, gfsprune's default until 0.1.0 with ``allocator="curves"``) or an
            :class:`~gfsprune.scoring.Objective`.
        evaluator: How candidates are scored: ``"batched"`` (fast: cached prefix, stacked
            candidates), ``"naive"`` (one forward pass per candidate, the reference), or an
            ``Evaluator`` subclass. Both built-ins give the same losses up to float rounding.
        allocator: How a budget (``Macs``, ``Params``, ...) becomes per-layer widths:
            ``"curves"`` (from each layer's loss against its width, measured by a first pass
            of greedy selection on each layer alone, fast by default, see
            :class:`~gfsprune.core.allocate.Curves`: wider where the loss rises faster;
            with ``"reconstruction"`` the network loss at a few widths along each layer's
            greedy path), ``"uniform"`` (the same fraction of every layer) or a
            ``WidthAllocator``.
        round_to: Every pruned width a multiple of this (or the layer's full width), for
            kernels made for such channel counts (8: GPU tensor cores); whether it is faster
            on a CPU depends on its kernels, so compare the measured latencies. Budgets are
            still met, to the nearest step. Applies to ``Macs``, ``Params`` and
            ``Tolerance`` targets (refused with ``Widths``, which are taken as given).
        rescale: Multiply kept channels by ``width / kept`` (the paper's mean-field average)
            and fold the factor into the pruned model (see ``rescale_into``).
        rescale_into: Where the pruned model holds that factor: ``"batchnorm"`` (the running
            statistics of the BatchNorm right after a consumer, where there is one and all
            its kept inputs carry the same factor; the consumers' weights elsewhere) or
            ``"weights"`` (always the consumers' weights). Both compute the same function;
            a factor in the weights before a BatchNorm slows their fine-tuning (it divides
            their effective learning rate by about its square), one in the statistics does
            not.
        refit: After each layer's choice, re-solve its consumers' weights by least squares
            so that they reproduce the unpruned network's outputs on the first batches of
            the data (plain convolutions and linear layers; kept only where the loss on those
            batches does not rise; :mod:`gfsprune.core.refit`).
        tuning: Fine-tune the masked network after each pruned layer, as the paper's code
            does (a :class:`~gfsprune.core.tuning.LayerTuning`: SGD steps on the data, e.g.
            a tenth of an epoch at learning rate 2.5e-3); ``None``: no training during
            pruning.
        device: Where to run (``None``: the device of the model's parameters).

    Example:
        >>> PruneConfig(candidates=10, strategy="backward").strategy
        'backward'
    """

    strategy: str | Strategy = "forward"
    schedule: str | Schedule = "exact"
    candidates: int | None = 50
    tie: float = 1e-5
    seed: int = 0
    objective: str | Objective = "reconstruction"
    evaluator: str | type[Evaluator] = "batched"
    allocator: str | WidthAllocator = "uniform"
    round_to: int = 1
    rescale: bool = True
    rescale_into: str = "batchnorm"
    refit: bool = False
    tuning: LayerTuning | None = None
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        c = self.candidates
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c <= 0):
            raise ConfigError(
                "The 'candidates' option of PruneConfig must be a positive integer or None "
                f"(all channels). Got {c!r} instead."
            )
        s = self.seed
        # torch's generators take seeds below 2**64; layer i is seeded with seed + i.
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise ConfigError(
                f"The 'seed' option of PruneConfig must be an integer in [0, 2**63). Got "
                f"{s!r} instead."
            )
        t = self.tie
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < 1:
            raise ConfigError(
                "The 'tie' option of PruneConfig must be a number in [0, 1) (a relative loss "
                f"difference). Got {t!r} instead."
            )
        r = self.round_to
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ConfigError(
                "The 'round_to' option of PruneConfig must be a positive integer (1: any "
                f"width). Got {r!r} instead."
            )
        if not isinstance(self.refit, bool):
            raise ConfigError(
                f"The 'refit' option of PruneConfig must be True or False. Got {self.refit!r} "
                "instead."
            )
        if self.tuning is not None and not isinstance(self.tuning, LayerTuning):
            raise ConfigError(
                "The 'tuning' option of PruneConfig must be a LayerTuning(steps=...) or None. "
                f"Got {self.tuning!r} instead."
            )
        if not isinstance(self.rescale, bool):
            raise ConfigError(
                f"The 'rescale' option of PruneConfig must be True or False. Got "
                f"{self.rescale!r} instead."
            )
        if self.rescale_into not in RESCALE_INTO:
            raise ConfigError(
                "The 'rescale_into' option of PruneConfig must be 'batchnorm' or 'weights'. "
                f"Got {self.rescale_into!r} instead."
            )
        if not self.rescale and self.rescale_into != "batchnorm":
            raise ConfigError(
                f"'rescale_into={self.rescale_into!r}' says where the rescale's factor goes, "
                "but rescale=False has none; leave rescale_into out."
            )
        if self.schedule is None:
            raise ConfigError("'schedule=None' is spelled schedule='exact' (the default).")
        strategy, schedule = self.make_strategy(), self.make_schedule()
        if not strategy.uses_schedule and not isinstance(schedule, Exact):
            raise ConfigError(
                f"The '{strategy.name}' strategy runs only the exact schedule; leave "
                f"'schedule' out. Got schedule={self.schedule!r}."
            )
        self.make_allocator()
        self.make_objective()
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise ConfigError(
                    "The 'device' option of PruneConfig must name a torch device (e.g. 'cpu', "
                    f"'cuda:0') or be None. Got {self.device!r} instead."
                ) from err

    def make_strategy(self) -> Strategy:
        """The strategy, instantiated where it was given by name."""
        return _resolve("strategy", self.strategy, STRATEGIES, Strategy)

    def make_schedule(self) -> Schedule:
        """The schedule, instantiated where it was given by name."""
        return _resolve("schedule", self.schedule, SCHEDULES, Schedule)

    def make_allocator(self) -> WidthAllocator:
        """The width allocator, instantiated where it was given by name."""
        return _resolve("allocator", self.allocator, ALLOCATORS, WidthAllocator)

    def make_objective(self) -> Objective:
        """The objective, instantiated where it was given by name (``"loss"``: the network
        loss through ``evaluator``)."""
        if self.objective == NetworkLoss.name:
            return NetworkLoss(evaluator=self.evaluator)
        if self.evaluator != "batched":
            raise ConfigError(
                "The 'evaluator' option of PruneConfig scores the network loss; with another "
                f"objective leave it out. Got evaluator={self.evaluator!r}."
            )
        return _resolve("objective", self.objective, OBJECTIVES, Objective)

    def settings(self) -> dict[str, Any]:
        """The options that decide the plan, as JSON (for resuming with the same options).
        The evaluator, device and ``rescale_into`` are left out: they do not change the
        picks."""
        return {
            "candidates": self.candidates,
            "rescale": self.rescale,
            "refit": self.refit,
            "tuning": None if self.tuning is None else repr(self.tuning),
            "seed": self.seed,
            "strategy": self.make_strategy().name,
            "allocator": self.make_allocator().name,
            "round_to": self.round_to,
            "tie": self.tie,
            "schedule": self.make_schedule().settings(),
        } | self._objective_settings()

    def _objective_settings(self) -> dict[str, str]:
        """The objective's settings, where it is not the network loss (so that progress files
        written before objectives existed still resume)."""
        settings = self.make_objective().settings()
        return {} if settings == NetworkLoss.name else {"objective": settings}


def option_docs(cls: type = PruneConfig) -> dict[str, str]:
    """Each option's documentation, from the ``Attributes:`` section of ``cls``'s docstring
    (the one place options are documented; the command line's help is made from it).

    Example:
        >>> option_docs()["seed"]
        'Seeds the candidate sampling (layer ``i`` uses ``seed + i``).'
    """
    docs: dict[str, list[str]] = {}
    lines = (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    for line in lines:
        text = line.strip()
        if not text or text.startswith(("Example", ">>>")):
            if text:
                break
            continue
        head, _, rest = text.partition(": ")
        if line.startswith(" " * 8) and not line.startswith(" " * 12) and head.isidentifier():
            docs[head] = [rest]
        elif docs:
            docs[next(reversed(docs))].append(text)
    return {name: " ".join(parts) for name, parts in docs.items()}


#: The options by concern, with a title (the command line's groups of flags).
GROUPS: Mapping[str, tuple[str, ...]] = {
    "selection: how each layer's items are chosen": (
        "strategy",
        "schedule",
        "candidates",
        "tie",
        "seed",
    ),
    "objective: what a layer's selection minimises": ("objective", "evaluator"),
    "widths: how a budget becomes per-layer widths": ("allocator", "round_to"),
    "rescale: the mean-field factor of the kept channels": ("rescale", "rescale_into"),
    "corrections: what follows each layer's choice": ("refit", "tuning"),
    "device": ("device",),
}

#: The names the options given by name accept (the command line's choices).
CHOICES: Mapping[str, Sequence[str]] = {
    "strategy": sorted(STRATEGIES),
    "allocator": sorted(ALLOCATORS),
    "schedule": sorted(SCHEDULES),
    "evaluator": sorted(EVALUATORS),
    "objective": sorted(OBJECTIVES),
    "rescale_into": RESCALE_INTO,
}
