"""The paper's comparisons: one pre-trained network, several ways of choosing a pruned network's
channels at the same MACs, or at the same measured latency (:mod:`gfsprune.workflow.methods`),
each fine-tuned the same way at every fine-tuning budget.

Each budget is a separate fine-tuning run from the pruned (and, with ``recalibrate``,
BatchNorm-recalibrated) model, not a continuation of the previous budget's: the recipe's
cosine learning rate falls to 0 over the run's own epochs, so the state after epoch 1 of a
5-epoch run (learning rate still near its peak) is not what a 1-epoch budget gives, and a
finished 1-epoch run (learning rate 0) cannot be continued on the 5-epoch schedule. The cost
is the sum of the budgets instead of the largest.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gfsprune._inputs import model_device
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.core.recalibrate import batch_norms, recalibrate_bn
from gfsprune.errors import ConfigError
from gfsprune.plan import LayerPlan
from gfsprune.targets import Latency, Macs
from gfsprune.workflow.data import DataBundle, make_loader, require_labels
from gfsprune.workflow.distillation import Distillation, agreement
from gfsprune.workflow.latency import latencies, measure_latency
from gfsprune.workflow.methods import METHODS, MethodContext
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.train import TrainConfig, evaluate, fit

__all__ = ["CompareConfig", "Comparison", "compare", "parse_epochs", "parse_methods"]


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Options of :func:`compare`.

    Attributes:
        macs: The MACs ratio greedy forward selection prunes to, in (0, 1).
        latency: Instead of ``macs``: the latency budget greedy forward selection prunes
            to; Torch-Pruning's pipelines are then matched to gfs's measured latency at the
            budget's batch size (the other methods keep gfs's widths, so its latency).
        finetune: The fine-tuning every pruned model gets (its ``seed`` included); its
            ``epochs`` is replaced by each budget of ``epochs``.
        epochs: The fine-tuning budgets, in epochs: an int or a tuple of them; stored as a
            sorted tuple that always starts with 0 (right after pruning, measured anyway).
            None means ``finetune.epochs`` alone.
        recalibrate: Re-estimate every pruned model's BatchNorm statistics on training
            batches (:func:`gfsprune.recalibrate_bn`) before it is measured and fine-tuned;
            the row keeps the accuracy before it too.
        scratch: The training of ``scratch`` (pre-training recipe, pre-training plus
            the largest budget's epochs), reported under the largest budget; required when
            ``scratch`` is among the methods.
        methods: Which methods to run and report, in order; ``gfs`` always runs first
            (it fixes the widths) but is reported only when listed.
        prune: How ``gfs`` and ``backward`` select (its ``strategy`` and ``seed`` are set
            by the method and by ``seed``); the other methods never rescale.
        batch_size: Training images per mini-batch for the greedy steps and Taylor gradients.
        seed: Seeds the mini-batch order, candidate sampling, random channels and the
            re-initialisation of ``scratch``.
        distill: Select, score the Taylor gradients and fine-tune by distillation from the
            unpruned model (:class:`~gfsprune.workflow.distillation.Distillation`; labels
            mixed in where the data has them) and report the agreement with it; needed for
            data without labels.
    """

    macs: float | None = None
    finetune: TrainConfig
    epochs: int | tuple[int, ...] | None = None
    recalibrate: bool = False
    scratch: TrainConfig | None = None
    methods: tuple[str, ...] = tuple(METHODS)
    prune: PruneConfig = PruneConfig()
    batch_size: int = 128
    seed: int = 0
    distill: Distillation | None = None
    latency: Latency | None = None

    def __post_init__(self) -> None:
        if (self.macs is None) == (self.latency is None):
            raise ConfigError(
                "Give a comparison one budget: 'macs' (a MACs ratio) or 'latency' (a Latency "
                f"target). Got macs={self.macs!r}, latency={self.latency!r}."
            )
        if self.latency is not None and (
            not isinstance(self.latency, Latency) or self.latency.channels_last
        ):
            raise ConfigError(
                "'latency' must be a Latency target in the default memory format (compare "
                f"times every method so), e.g. Latency(0.5). Got {self.latency!r}."
            )
        if self.macs is not None:
            Macs(self.macs)  # validates the ratio
        parse_methods(",".join(self.methods))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"'seed' must be a non-negative integer. Got {self.seed!r} instead.")
        epochs = self.finetune.epochs if self.epochs is None else self.epochs
        budgets = (epochs,) if isinstance(epochs, int) else tuple(epochs)
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in budgets):
            raise ConfigError(
                "'epochs' must be a non-negative integer or a tuple of them. "
                f"Got {self.epochs!r} instead."
            )
        object.__setattr__(self, "epochs", tuple(sorted({0, *budgets})))  # frozen: normalise
        for budget in self.epochs[1:]:
            dataclasses.replace(self.finetune, epochs=budget)  # validates warmup_epochs < it
        if any(METHODS[m].from_scratch for m in self.methods) and self.epochs == (0,):
            raise ConfigError(
                "'scratch' is reported after the largest fine-tuning budget; give 'epochs' one "
                "above 0, or leave scratch out of the methods."
            )


@dataclass
class Comparison:
    """What :func:`compare` measured.

    Attributes:
        results: ``{"base": {acc, loss, macs, params, <latency>}, "methods": {name: {macs,
            params, acc_pruned, loss_pruned, seconds, <latency>, epochs: {budget: {acc,
            loss}}}}}`` (the layout of ``results.json``); with distillation also (without
            labels only) ``agree`` and ``kl`` beside ``acc`` and ``loss`` (the top-1 agreement
            with the unpruned model and the KL divergence to it, or ``mse`` for outputs other
            than logits; :func:`~gfsprune.workflow.distillation.agreement`), ``agree_pruned``
            and ``kl_pruned`` beside ``acc_pruned``; ``acc_pruned`` and ``loss_pruned`` are
            right after pruning, ``epochs["0"]`` after the comparison's BatchNorm
            recalibration (the same without it) and ``epochs[str(e)]`` after ``e`` more epochs
            of fine-tuning;
            ``seconds`` is the time to choose the channels and build the pruned model (for
            ``scratch``, to re-initialise it), without evaluation or fine-tuning;
            ``<latency>`` is the measured latency's fields
            (:class:`~gfsprune.io.latency.MeasuredLatency`: the CPU's, and the GPU's where
            the comparison runs on one); with a latency budget also ``budget``: ``{target,
            batch, latency_before, latency_after, latency_predicted_before,
            latency_predicted_after}`` (gfs's, in seconds at the budget's batch size, as its
            cost model measured and predicted them).
        plan: The layers greedy forward selection pruned, their widths and kept channels.
    """

    results: dict
    plan: list[LayerPlan]


def parse_methods(text: str) -> tuple[str, ...]:
    """``"gfs,l1"`` -> ``("gfs", "l1")``, each checked against :data:`METHODS`.

    Example:
        >>> parse_methods("gfs, random")
        ('gfs', 'random')
    """
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ConfigError(
            f"methods must be distinct names among {', '.join(METHODS)}, comma-separated. "
            f"Got {text!r}" + (f" ({unknown[0]!r} is unknown)." if unknown else ".")
        )
    return methods


def parse_epochs(text: str) -> tuple[int, ...]:
    """``"0,1,5"`` -> ``(0, 1, 5)``: fine-tuning budgets, comma-separated.

    Example:
        >>> parse_epochs("5, 1")
        (5, 1)
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(
            "epochs must be non-negative whole numbers of epochs, comma-separated (e.g. 0,1,5). "
            f"Got {text!r} instead."
        )
    return tuple(int(p) for p in parts)


def compare(
    model: nn.Module,
    data: DataBundle,
    config: CompareConfig,
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
    done: Mapping[str, dict] | None = None,
    on_result: Callable[[str, dict], None] | None = None,
) -> Comparison:
    """Prune ``model`` to greedy forward selection's MACs by every method, fine-tune each.

    Args:
        model: The pre-trained network; not modified.
        data: Pruning and fine-tuning use ``data.train``; accuracy and loss are on
            ``data.test``.
        config: The target, the methods and the training recipes.
        progress: Show progress bars.
        device: Where to prune and train (default: the model's device).
        done: Rows of methods already measured (by an interrupted run with the same
            config): they are reused, not run again. Greedy selection always runs (it is
            deterministic and fixes the widths).
        on_result: Called as ``on_result(method, row)`` as each method finishes, so that a
            caller can save it at once.

    Returns:
        The results table and greedy selection's plan.

    Example:
        >>> from gfsprune.workflow.data import load_data
        >>> from gfsprune.models import get
        >>> config = CompareConfig(
        ...     macs=0.5, finetune=TrainConfig(epochs=1), methods=("gfs", "random")
        ... )
        >>> comparison = compare(get("digits_cnn"), load_data("digits"), config, progress=False)
        >>> sorted(comparison.results["methods"])
        ['gfs', 'random']
    """
    if any(METHODS[m].from_scratch for m in config.methods) and config.scratch is None:
        raise ConfigError("CompareConfig.scratch (its training recipe) is needed for 'scratch'.")
    if config.recalibrate and not batch_norms(model):
        raise ConfigError(
            f"recalibrate=True re-estimates BatchNorm statistics, but {type(model).__name__} has "
            "no BatchNorm layer; leave recalibrate off."
        )
    device = torch.device(device) if device is not None else model_device(model)
    model = copy.deepcopy(model).to(device).eval()
    example_inputs = torch.zeros(1, *data.input_shape, device=device)
    if config.distill is None:
        require_labels(data)
    loss_fn = None if config.distill is None else config.distill.loss(model, data)
    if loss_fn is not None and loss_fn.kind == "mse" and not data.labelled:
        raise ConfigError(
            "compare ranks by test accuracy or top-1 agreement with the unpruned model; a model "
            f"distilled by MSE on data without labels ({data.name!r}) has neither. Prune it "
            "with `gfsprune prune --distill` instead"
        )

    def loader() -> Iterable:
        """The training batches in the same seeded order for every method, so that a method's
        result does not depend on which methods ran before it; with distillation, the
        unpruned model's outputs are their targets."""
        batches = make_loader(
            data.train, batch_size=config.batch_size, shuffle=True, seed=config.seed
        )
        if config.distill is None:
            return batches
        return config.distill.batches(model, batches, data)[0]

    macs, params = count(model, example_inputs)
    results: dict = {
        "base": {
            **_scores(model, data, config, teacher=model),
            "macs": macs,
            "params": params,
            **latencies(model, data.input_shape, device).to_json(),
        },
        "methods": {},
    }
    options = dataclasses.replace(config.prune, seed=config.seed, device=device)
    start = time.perf_counter()
    with seeded(config.seed):  # the training images' augmentation draws from it
        greedy = prune(
            model,
            loader(),
            example_inputs,
            target=config.latency or Macs(config.macs),
            config=options,
            loss_fn=loss_fn,
            progress=progress,
        )
    greedy_seconds = time.perf_counter() - start
    latency = None
    if config.latency is not None:
        before, after = greedy.metrics_before, greedy.metrics_after
        results["budget"] = {
            "target": repr(config.latency),
            "batch": config.latency.batch,
            **{f"{k}_before": before[k] for k in ("latency", "latency_predicted")},
            **{f"{k}_after": after[k] for k in ("latency", "latency_predicted")},
        }
        latency = _latency_share(model, data.input_shape, config.latency.batch, device)
    context = MethodContext(
        model=model,
        greedy=greedy,
        loader=loader,
        example_inputs=example_inputs,
        prune=options,
        seed=config.seed,
        device=device,
        progress=progress,
        loss_fn=loss_fn,
        latency=latency,
    )
    for name in config.methods:
        # a row is reused only where it scored every budget (a damaged results.json may lack
        # one: issue 28); otherwise the method runs again
        wanted = {"0", *map(str, _recipes(name, config))}
        if done is not None and name in done and set(done[name]["epochs"]) >= wanted:
            results["methods"][name] = dict(done[name])
            continue
        method = METHODS[name]
        start = time.perf_counter()
        pruned = method.build(context)
        seconds = greedy_seconds if name == "gfs" else time.perf_counter() - start
        row = _finetune_and_score(
            name,
            pruned,
            data,
            config,
            calibration=loader,
            example_inputs=example_inputs,
            seconds=seconds,
            progress=progress,
            device=device,
            teacher=model,
        )
        results["methods"][name] = row
        if on_result is not None:
            on_result(name, row)
    return Comparison(results=results, plan=greedy.plan)


def _latency_share(
    model: nn.Module, shape: tuple[int, ...], batch: int, device: torch.device
) -> Callable[[nn.Module], float]:
    """A model's measured latency on ``device`` at ``batch`` (random inputs of ``shape``),
    as a share of ``model``'s (timed once, here)."""
    full = measure_latency(model, shape, batch, device=device)
    return lambda pruned: measure_latency(pruned, shape, batch, device=device) / full


def _recipes(name: str, config: CompareConfig) -> dict[int, TrainConfig]:
    """The fine-tuning budgets (epochs) a method is scored at after pruning, and how."""
    if METHODS[name].from_scratch:
        return {config.epochs[-1]: config.scratch}
    return {e: dataclasses.replace(config.finetune, epochs=e) for e in config.epochs[1:]}


def _finetune_and_score(
    name: str,
    pruned: nn.Module,
    data: DataBundle,
    config: CompareConfig,
    *,
    calibration: Callable[[], Iterable],
    example_inputs: torch.Tensor,
    seconds: float,
    progress: bool,
    device: torch.device,
    teacher: nn.Module,
) -> dict:
    """One method's row: costs, scores right after pruning and at every budget."""
    macs, params = count(pruned, example_inputs)
    speed = latencies(pruned, data.input_shape, device)
    right_after = _scores(pruned, data, config, teacher=teacher)
    start = copy.deepcopy(pruned)
    if config.recalibrate:
        recalibrate_bn(start, calibration(), labelled=True)
    scores = {"0": _scores(start, data, config, teacher=teacher)}
    distilling = {} if config.distill is None else {"distill": config.distill, "teacher": teacher}
    for budget, recipe in _recipes(name, config).items():
        tuned = copy.deepcopy(start)
        history = fit(
            tuned,
            data,
            recipe,
            progress=progress,
            device=device,
            label=f"fine-tune {name}",
            **distilling,
        )
        scores[str(budget)] = _test_scores(history[-1])
    return {
        "macs": macs,
        "params": params,
        **{f"{key}_pruned": value for key, value in right_after.items()},
        "seconds": seconds,
        **speed.to_json(),
        "epochs": scores,
    }


def _scores(
    model: nn.Module, data: DataBundle, config: CompareConfig, *, teacher: nn.Module
) -> dict[str, float]:
    """Test accuracy and loss on labelled data; with distillation the agreement with
    ``teacher`` (``agree`` and ``kl``, or ``mse``)."""
    scores = {}
    if data.labelled:
        scores["acc"], scores["loss"] = evaluate(model, data.test)
    if config.distill is not None:
        scores |= agreement(model, teacher, data.test, labelled=data.labelled)
    return scores


def _test_scores(epoch: Mapping[str, float]) -> dict[str, float]:
    """The test scores of one epoch of :func:`fit`'s history, without the ``test_``."""
    return {k.removeprefix("test_"): v for k, v in epoch.items() if k.startswith("test_")}
