"""The paper's comparisons: one pre-trained network, one pruned architecture, several ways of
choosing its channels, each fine-tuned the same way.

Greedy forward selection (``gfs``) runs first at a MACs target and fixes the architecture:
every other method keeps exactly as many channels of each layer as it did, so only *which*
channels are kept differs. The methods:

- ``gfs``: :func:`gfsprune.prune`, greedy forward selection by loss (with the mean-field
  rescale folded into the weights);
- ``l1``, ``bn``, ``taylor``, ``random``: Torch-Pruning's filter L1 magnitude
  (``GroupMagnitudeImportance(p=1)``), BatchNorm scale (network slimming), first-order Taylor
  and random importances, each scored on the layer's whole dependency group; the top channels
  are kept, with no rescale, as Torch-Pruning does;
- ``backward``: greedy backward elimination by loss (``strategy="backward"``);
- ``scratch``: the same architecture re-initialised at random and trained from scratch, for
  as many epochs as pre-training plus fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader

from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ConfigError, ModelError
from gfsprune.models._layers import init_weights
from gfsprune.plan import LayerPlan, PruneResult
from gfsprune.surgery import build_graph, find_layers, prune_channels
from gfsprune.targets import Macs, Widths
from gfsprune.workflow.data import DataBundle, make_loader
from gfsprune.workflow.train import TrainConfig, evaluate, fit

__all__ = [
    "METHODS",
    "CompareConfig",
    "Comparison",
    "compare",
    "importance_channels",
    "parse_methods",
    "reinitialize",
    "seeded",
]

METHODS = ("gfs", "l1", "bn", "taylor", "random", "backward", "scratch")
_IMPORTANCES: Mapping[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "bn": tp.importance.BNScaleImportance,
    "taylor": tp.importance.TaylorImportance,
    "random": tp.importance.RandomImportance,
}
# Taylor importance needs gradients; they are summed over this many training mini-batches.
_GRADIENT_BATCHES = 4


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
    methods: tuple[str, ...] = METHODS
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
        results: ``{"base": {acc, loss, macs, params}, "methods": {name: {macs, params,
            acc_pruned, loss_pruned, acc_finetuned, loss_finetuned, seconds}}}``; ``seconds``
            is the time to choose the channels and build the pruned model (for ``scratch``,
            to re-initialise it), without evaluation or fine-tuning.
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


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded, then restore its state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def importance_channels(
    model: nn.Module,
    example_inputs: torch.Tensor,
    widths: Mapping[str, int],
    importance: tp.importance.Importance,
) -> dict[str, list[int]]:
    """The ``widths[layer]`` channels of each layer that ``importance`` scores highest.

    Each channel layer's importance is computed on its whole Torch-Pruning dependency group
    (every coupled convolution, BatchNorm and consumer). Gradient-based importances read the
    ``.grad`` already on the model's parameters.
    """
    graph = build_graph(model, example_inputs)
    layers, _ = find_layers(model, example_inputs, graph=graph)
    modules = dict(model.named_modules())
    kept = {}
    for layer in layers:
        if layer.name not in widths:
            continue
        root = modules[layer.name]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        group = graph.get_pruning_group(root, handler, list(range(layer.width)))
        with torch.no_grad():
            scores = importance(group)
        if scores is None or scores.shape != (layer.width,):
            raise ModelError(
                f"{type(importance).__name__} gives no score per channel of layer "
                f"'{layer.name}' ({layer.width} channels); bn needs a BatchNorm in every "
                "channel layer. Leave that method out of --methods."
            )
        kept[layer.name] = sorted(torch.topk(scores, widths[layer.name]).indices.tolist())
    return kept


def reinitialize(model: nn.Module, *, seed: int) -> nn.Module:
    """A copy of ``model`` with fresh random weights, drawn as the zoo draws them."""
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).cpu()  # drawn on the CPU: seeded the same on every machine
    with seeded(seed):
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # also clears BatchNorm running statistics
        init_weights(fresh)
    return fresh.to(device)


def _accumulate_gradients(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    model.zero_grad(set_to_none=True)
    for step, (images, labels) in enumerate(loader):
        if step == _GRADIENT_BATCHES:
            break
        F.cross_entropy(model(images.to(device)), labels.to(device)).backward()


def _choose_by_importance(
    model: nn.Module,
    method: str,
    widths: Mapping[str, int],
    loader: DataLoader,
    *,
    example_inputs: torch.Tensor,
    seed: int,
    device: torch.device,
) -> nn.Module:
    work = copy.deepcopy(model).to(device).eval()
    if method == "taylor":
        with seeded(seed):
            _accumulate_gradients(work, loader, device)
    with seeded(seed):  # RandomImportance draws from torch's global generator
        kept = importance_channels(work, example_inputs, widths, _IMPORTANCES[method]())
    work.zero_grad(set_to_none=True)
    return prune_channels(work, example_inputs, kept)


def compare(
    model: nn.Module,
    data: DataBundle,
    config: CompareConfig,
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Comparison:
    """Prune ``model`` to greedy forward selection's widths by every method, fine-tune each.

    Args:
        model: The pre-trained network; not modified.
        data: Pruning and fine-tuning use ``data.train``; accuracy and loss are on
            ``data.test``.
        config: The target, the methods and the training recipes.
        progress: Show progress bars.
        device: Where to prune and train (default: CPU).

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
    if "scratch" in config.methods and config.scratch is None:
        raise ConfigError("CompareConfig.scratch (its training recipe) is needed for 'scratch'.")
    device = torch.device(device or "cpu")
    model = copy.deepcopy(model).to(device).eval()
    example_inputs = torch.zeros(1, *data.input_shape, device=device)

    def loader() -> DataLoader:
        """The training batches in the same seeded order for every method, so that a method's
        result does not depend on which methods ran before it."""
        return make_loader(data.train, batch_size=config.batch_size, shuffle=True, seed=config.seed)

    acc, loss = evaluate(model, data.test)
    macs, params = count(model, example_inputs)
    results: dict = {
        "base": {"acc": acc, "loss": loss, "macs": macs, "params": params},
        "methods": {},
    }

    def prune_to(target: Macs | Widths, strategy: str) -> PruneResult:
        options = dataclasses.replace(
            config.prune, strategy=strategy, seed=config.seed, device=device
        )
        with seeded(config.seed):  # the training images' augmentation draws from it
            return prune(
                model, loader(), example_inputs, target=target, config=options, progress=progress
            )

    start = time.perf_counter()
    greedy = prune_to(Macs(config.macs), "forward")
    greedy_seconds = time.perf_counter() - start
    widths = {p.name: len(p.kept) for p in greedy.plan}
    for method in config.methods:
        start = time.perf_counter()
        if method == "gfs":
            pruned = greedy.model
        elif method == "backward":
            pruned = prune_to(Widths(widths), "backward").model
        elif method == "scratch":
            pruned = reinitialize(greedy.model, seed=config.seed)
        else:
            pruned = _choose_by_importance(
                model,
                method,
                widths,
                loader(),
                example_inputs=example_inputs,
                seed=config.seed,
                device=device,
            )
        seconds = greedy_seconds if method == "gfs" else time.perf_counter() - start
        results["methods"][method] = _finetune_and_score(
            pruned,
            data,
            config.scratch if method == "scratch" else config.finetune,
            example_inputs=example_inputs,
            seconds=seconds,
            progress=progress,
            device=device,
        )
    return Comparison(results=results, plan=greedy.plan)


def _finetune_and_score(
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
    acc_pruned, loss_pruned = evaluate(pruned, data.test)
    tuned = copy.deepcopy(pruned)
    fit(tuned, data, recipe, progress=progress, device=device)
    acc_tuned, loss_tuned = evaluate(tuned, data.test)
    return {
        "macs": macs,
        "params": params,
        "acc_pruned": acc_pruned,
        "loss_pruned": loss_pruned,
        "acc_finetuned": acc_tuned,
        "loss_finetuned": loss_tuned,
        "seconds": seconds,
    }
