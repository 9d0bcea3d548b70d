"""The paper's comparisons: one pre-trained network, one pruned architecture, several ways of
choosing its channels (:mod:`gfsprune.workflow.methods`), each fine-tuned the same way."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from gfsprune._inputs import model_device
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ConfigError
from gfsprune.plan import LayerPlan
from gfsprune.targets import Macs
from gfsprune.workflow.data import DataBundle, make_loader
from gfsprune.workflow.latency import latencies
from gfsprune.workflow.methods import METHODS, MethodContext
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.train import TrainConfig, evaluate, fit

__all__ = ["CompareConfig", "Comparison", "compare", "parse_methods"]


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Options of :func:`compare`.

    Attributes:
        macs: The MACs ratio greedy forward selection prunes to, in (0, 1).
        finetune: The fine-tuning every pruned model gets (its ``seed`` included).
        scratch: The training of ``scratch`` (pre-training recipe, pre-training plus
            fine-tuning epochs); required when ``scratch`` is among the methods.
        methods: Which methods to run and report, in order; ``gfs`` always runs first
            (it fixes the widths) but is reported only when listed.
        prune: How ``gfs`` and ``backward`` select (its ``strategy`` and ``seed`` are set
            by the method and by ``seed``); the other methods never rescale.
        batch_size: Training images per mini-batch for the greedy steps and Taylor gradients.
        seed: Seeds the mini-batch order, candidate sampling, random channels and the
            re-initialisation of ``scratch``.
    """

    macs: float
    finetune: TrainConfig
    scratch: TrainConfig | None = None
    methods: tuple[str, ...] = tuple(METHODS)
    prune: PruneConfig = PruneConfig()
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        Macs(self.macs)  # validates the ratio
        parse_methods(",".join(self.methods))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"'seed' must be a non-negative integer. Got {self.seed!r} instead.")


@dataclass
class Comparison:
    """What :func:`compare` measured.

    Attributes:
        results: ``{"base": {acc, loss, macs, params, latency_b1, latency_b64}, "methods":
            {name: {macs, params, acc_pruned, loss_pruned, acc_finetuned, loss_finetuned,
            seconds, latency_b1, latency_b64}}}``; ``seconds`` is the time to choose the
            channels and build the pruned model (for ``scratch``, to re-initialise it),
            without evaluation or fine-tuning; latencies are CPU seconds per forward pass at
            batch 1 and 64 (median), with torch's current thread count.
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
    """Prune ``model`` to greedy forward selection's widths by every method, fine-tune each.

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
    device = torch.device(device) if device is not None else model_device(model)
    model = copy.deepcopy(model).to(device).eval()
    example_inputs = torch.zeros(1, *data.input_shape, device=device)

    def loader() -> DataLoader:
        """The training batches in the same seeded order for every method, so that a method's
        result does not depend on which methods ran before it."""
        return make_loader(data.train, batch_size=config.batch_size, shuffle=True, seed=config.seed)

    acc, loss = evaluate(model, data.test)
    macs, params = count(model, example_inputs)
    results: dict = {
        "base": {
            "acc": acc,
            "loss": loss,
            "macs": macs,
            "params": params,
            **latencies(model, data.input_shape),
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
            target=Macs(config.macs),
            config=options,
            progress=progress,
        )
    greedy_seconds = time.perf_counter() - start
    context = MethodContext(
        model=model,
        greedy=greedy,
        loader=loader,
        example_inputs=example_inputs,
        prune=options,
        seed=config.seed,
        device=device,
        progress=progress,
    )
    for name in config.methods:
        if done is not None and name in done:
            results["methods"][name] = dict(done[name])
            continue
        method = METHODS[name]
        start = time.perf_counter()
        pruned = method.build(context)
        seconds = greedy_seconds if name == "gfs" else time.perf_counter() - start
        recipe = config.scratch if method.from_scratch else config.finetune
        row = _finetune_and_score(
            name,
            pruned,
            data,
            recipe,
            example_inputs=example_inputs,
            seconds=seconds,
            progress=progress,
            device=device,
        )
        results["methods"][name] = row
        if on_result is not None:
            on_result(name, row)
    return Comparison(results=results, plan=greedy.plan)


def _finetune_and_score(
    name: str,
    pruned: nn.Module,
    data: DataBundle,
    recipe: TrainConfig,
    *,
    example_inputs: torch.Tensor,
    seconds: float,
    progress: bool,
    device: torch.device,
) -> dict:
    macs, params = count(pruned, example_inputs)
    speed = latencies(pruned, data.input_shape)
    acc_pruned, loss_pruned = evaluate(pruned, data.test)
    tuned = copy.deepcopy(pruned)
    fit(tuned, data, recipe, progress=progress, device=device, label=f"fine-tune {name}")
    acc_tuned, loss_tuned = evaluate(tuned, data.test)
    return {
        "macs": macs,
        "params": params,
        "acc_pruned": acc_pruned,
        "loss_pruned": loss_pruned,
        "acc_finetuned": acc_tuned,
        "loss_finetuned": loss_tuned,
        "seconds": seconds,
        **speed,
    }
