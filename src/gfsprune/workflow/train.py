"""Training and fine-tuning with per-epoch checkpoints, exact resume and optional DDP.

The recipe is the paper's fine-tuning one (Ye et al., 2020, Sec. 5): SGD with Nesterov momentum
0.9, a cosine learning rate stepped every iteration, label smoothing 0.1, and weight decay
4e-5 on every parameter except BN parameters and biases.

Every random draw of an epoch -- the data order, the augmentation, dropout -- comes from
generators seeded by (seed, epoch, rank). A run resumed from the checkpoint written after
epoch k therefore repeats epochs k+1, ... exactly, and the checkpoint needs no RNG state.
On CUDA, "exactly" also needs ``torch.use_deterministic_algorithms(True)``: without it two
identical 3-epoch runs on an H100 ended up to 1e-3 apart; with it they, and a resumed run, agreed
bit for bit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from gfsprune import distributed
from gfsprune.core.losses import TeacherBatches
from gfsprune.errors import ConfigError, DataError, LossError, ModelError, first_line
from gfsprune.io.atomic import write_atomic
from gfsprune.workflow.data import DataBundle, check_labels, make_loader, require_labels
from gfsprune.workflow.distillation import Distillation, agreement
from gfsprune.workflow.seeding import seeded

__all__ = ["TRAIN_STATE_FILE", "TrainConfig", "evaluate", "fit", "param_groups", "resolve_device"]

TRAIN_STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`fit`; the defaults are the paper's fine-tuning recipe.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Samples per step, summed over all processes when distributed.
        lr: Peak learning rate; the cosine schedule falls from it to 0 over the run.
        momentum: SGD momentum.
        nesterov: Use Nesterov momentum.
        weight_decay: L2 penalty on weights; BN parameters and biases get none.
        label_smoothing: Label smoothing of the training cross-entropy.
        seed: Seeds the data order and augmentation of every epoch.
        warmup_epochs: Epochs of linear warm-up from 0 to ``lr`` before the cosine decay.
        workers: DataLoader worker processes; 0 loads in the training process.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    seed: int = 0
    warmup_epochs: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, constraint: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ConfigError(f"'{name}' must be {constraint}. Got {value!r} instead.")

        for name, least in ("epochs", 1), ("batch_size", 1), ("seed", 0), ("workers", 0):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
            check(ok, name, f"an integer >= {least}")
        check(self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number")
        check(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        check(not self.nesterov or self.momentum > 0, "momentum", "> 0 with nesterov=True")
        check(self.weight_decay >= 0, "weight_decay", "non-negative")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)")
        ok = isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs < self.epochs
        check(ok, "warmup_epochs", f"an integer in [0, epochs={self.epochs})")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None means this process's CUDA device if any, else CPU.

    Raises:
        ConfigError: If ``device`` names no torch device, or a CUDA device this machine
            does not have.
    """
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(
                f"device must name a torch device such as 'cpu' or 'cuda:0'. Got {device!r} "
                "instead."
            ) from err
        if device.type == "meta":  # shapes only: nothing could be computed or measured
            raise ConfigError(
                "device 'meta' holds no data, so nothing can be computed on it; use 'cpu' or "
                "'cuda' (--device)."
            )
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0 or (device.index or 0) >= count:
                have = f"only {count} CUDA device(s)" if count else "no CUDA device"
                raise ConfigError(
                    f"device {str(device)!r} was asked for, but this machine has {have}; use "
                    "device='cpu' (--device cpu)."
                )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups that decay only weights of dimension >= 2, not BN parameters or biases.

    Example:
        >>> groups = param_groups(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 4e-5)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 4e-05), (3, 0.0)]
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters; unfreeze some before training.")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def evaluate(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` in eval mode.

    Every process evaluates the whole set; the model's train/eval mode is restored after.

    Args:
        model: Maps a batch (N, C, H, W) to logits (N, classes).
        dataset_or_loader: The samples, or a loader over them (``batch_size`` is then unused).
        batch_size: Samples per forward pass.
        device: Where to evaluate (the model is moved there); None keeps the model's device.

    Example:
        >>> from gfsprune.workflow.data import load_data
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> accuracy, loss = evaluate(net, load_data("digits").test)
    """
    loader = dataset_or_loader
    if not isinstance(loader, DataLoader):
        loader = make_loader(loader, batch_size=batch_size, shuffle=False)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    else:
        device = torch.device(device)
        model.to(device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    with _evaluating(model):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            totals[0] += (logits.argmax(1) == labels).sum()
            totals[1] += F.cross_entropy(logits.float(), labels, reduction="sum")
            totals[2] += len(labels)
    correct, loss_sum, count = totals.tolist()
    if count == 0:
        raise DataError("cannot evaluate on an empty data set; give it at least one sample.")
    return correct / count, loss_sum / count


def fit(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    label: str = "",
    distill: Distillation | None = None,
    teacher: nn.Module | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data.train``, evaluating on ``data.test`` every epoch.

    When ``torch.distributed`` is initialised (see :mod:`gfsprune.distributed`) every process
    calls ``fit``: the model is wrapped in DistributedDataParallel, each process takes its
    share of every batch, rank 0 alone writes checkpoints and shows progress, and all
    processes return identical weights (BN running statistics are those of rank 0).

    Args:
        model: Maps a batch (N, C, H, W) to logits (N, classes); moved to ``device``.
        data: Training and test sets; their class count must match the model's outputs.
        config: Optimisation options.
        checkpoint: The file an interrupted run resumes from (a job writes
            :data:`TRAIN_STATE_FILE` in its folder): if given, rewritten after every epoch.
        resume: Continue from ``checkpoint`` (start afresh if there is none yet); the run
            must use the same ``config``.
        progress: Show a progress bar per epoch with the running loss and accuracy.
        device: Where to train; None means CUDA when available, else CPU.
        label: Names the run in the progress bars (e.g. which method is fine-tuned).
        distill: Train to match ``teacher``'s outputs (:class:`Distillation`: labels needed
            only where it mixes them in) instead of the cross-entropy on the labels.
        teacher: The model to distil from (usually the unpruned one), with ``distill``.

    Returns:
        One dict per epoch: ``epoch``, ``lr`` (at the epoch's end), ``train_loss``,
        ``train_acc`` (with ``distill``: agreement with the teacher's top-1 class),
        ``test_loss`` and ``test_acc`` (on labelled data), with ``distill`` the test split's
        :func:`gfsprune.workflow.distillation.agreement` as ``test_agree`` and ``test_kl``
        (``test_mse`` for non-logits), and ``seconds``.

    Example:
        >>> from gfsprune.workflow.data import load_data
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> history = fit(net, load_data("digits"), TrainConfig(epochs=1), progress=False)
        >>> history[-1]["test_acc"] > 0.5
        True
    """
    if resume and checkpoint is None:
        raise ConfigError("resume=True needs the checkpoint of the run to continue.")
    for split, dataset in ("train", data.train), ("test", data.test):
        if len(dataset) == 0:
            raise DataError(f"the {split} set of {data.name!r} is empty; give it some samples.")
    if (distill is None) != (teacher is None):
        raise ConfigError("give distill and teacher together (distillation needs both).")
    device = resolve_device(device)
    model.to(device)
    if distill is None:
        require_labels(data)  # before a sample is read as (image, label)
        check_labels(data, _count_outputs(model, data, device))
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    else:
        teacher.to(device)
        criterion = distill.loss(teacher, data)
        if criterion.alpha:
            require_labels(data)
            check_labels(data, _count_outputs(model, data, device))
    world = distributed.world_size()
    if config.batch_size % world:
        raise ConfigError(
            f"batch_size must be divisible by the {world} processes; got {config.batch_size}. "
            f"Use a multiple of {world}."
        )
    sampler = None
    if distributed.is_distributed():
        sampler = DistributedSampler(data.train, shuffle=True, seed=config.seed)
    samples = len(data.train) if sampler is None else len(sampler)
    steps = math.ceil(samples / (config.batch_size // world))
    optimizer, scheduler = _make_optimizer(model, config, steps_per_epoch=steps)
    path = None if checkpoint is None else Path(checkpoint)
    history: list[dict[str, float]] = []
    if resume and path.exists():
        history = _load_checkpoint(path, model, optimizer, scheduler, config=config, device=device)
    net = model
    if distributed.is_distributed():
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    for epoch in range(len(history), config.epochs):
        start = time.perf_counter()
        order_seed, rng_seed = _epoch_seeds(config.seed, epoch)
        loader = _train_loader(data.train, config, sampler, epoch=epoch, seed=order_seed)
        steps = len(loader)
        if distill is not None:
            keep = bool(criterion.alpha)
            loader = TeacherBatches(teacher, loader, labelled=data.labelled, keep_labels=keep)
        show = progress and distributed.is_main()
        with tqdm(
            total=steps,
            desc=f"{label}{': ' if label else ''}epoch {epoch + 1}/{config.epochs}",
            disable=not show,
        ) as bar:
            with seeded(rng_seed, device):
                train_loss, train_acc = _train_epoch(
                    net, loader, bar, optimizer, scheduler, criterion, epoch=epoch, device=device
                )
            distributed.broadcast_module(model)  # each rank updated its own BN statistics
            scores = {}
            if data.labelled:
                scores["test_acc"], scores["test_loss"] = evaluate(model, data.test, device=device)
            if distill is not None:
                found = agreement(model, teacher, data.test, labelled=data.labelled)
                scores |= {f"test_{key}": value for key, value in found.items()}
            bar.set_postfix(
                loss=f"{train_loss:.3f}",
                acc=f"{train_acc:.3f}",
                **{key: f"{value:.3f}" for key, value in scores.items()},
            )
        history.append(
            {
                "epoch": epoch + 1,
                "lr": scheduler.get_last_lr()[0],
                "train_loss": train_loss,
                "train_acc": train_acc,
                **scores,
                "seconds": time.perf_counter() - start,
            }
        )
        if path is not None and distributed.is_main():
            _save_checkpoint(path, model, optimizer, scheduler, config=config, history=history)
    return history


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Run the block in eval mode under inference_mode, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _count_outputs(model: nn.Module, data: DataBundle, device: torch.device) -> int:
    """The model's class count, from one test image; ModelError if the input does not fit."""
    image, _ = data.test[0]
    try:
        with _evaluating(model):
            logits = model(image.unsqueeze(0).to(device))
    except RuntimeError as err:
        raise ModelError(
            f"the model cannot take {data.name!r} images of shape {data.input_shape} "
            f"({first_line(err)}); build it for that input shape."
        ) from err
    if logits.ndim != 2:
        raise ModelError(
            f"the model must return logits of shape (batch, classes); got {tuple(logits.shape)}."
        )
    return logits.shape[1]


def _make_optimizer(
    model: nn.Module, config: TrainConfig, *, steps_per_epoch: int
) -> tuple[torch.optim.SGD, LambdaLR]:
    """SGD over :func:`param_groups`, with linear warm-up then cosine from 1 to 0 per step."""
    optimizer = torch.optim.SGD(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return optimizer, LambdaLR(optimizer, factor)


def _epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """Independent seeds for one epoch of this process: (data order, everything else)."""
    entropy = [seed, epoch, distributed.rank()]
    order, rest = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64).tolist()
    return order, rest


def _train_loader(
    dataset: Dataset,
    config: TrainConfig,
    sampler: DistributedSampler | None,
    *,
    epoch: int,
    seed: int,
) -> DataLoader:
    """One epoch's shuffled batches: ordered by ``seed``, or by ``sampler`` when distributed."""
    if sampler is None:
        return make_loader(
            dataset, batch_size=config.batch_size, shuffle=True, seed=seed, workers=config.workers
        )
    sampler.set_epoch(epoch)  # the sampler seeds its order with config.seed + epoch
    return DataLoader(
        dataset,
        batch_size=config.batch_size // distributed.world_size(),
        sampler=sampler,
        num_workers=config.workers,
    )


def _train_epoch(
    net: nn.Module,
    loader: DataLoader,
    bar: tqdm,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epoch: int,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over ``loader``; returns the mean loss and accuracy of all processes (with a
    teacher's outputs as targets, agreement with its top-1 class)."""
    net.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for step, (images, labels) in enumerate(loader, start=1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = net(images)
        loss = criterion(logits, labels)
        _check_finite(loss.detach(), epoch=epoch, step=step, lr=scheduler.get_last_lr()[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals[0] += loss.detach() * len(labels)
        totals[1] += _hits(logits.detach(), labels)
        totals[2] += len(labels)
        if not bar.disable:
            loss_sum, correct, count = totals.tolist()
            bar.set_postfix(
                loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}", refresh=False
            )
            bar.update()
    loss_sum, correct, count = distributed.all_gather(totals).sum(0).tolist()
    return loss_sum / count, correct / count


def _hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Samples whose top-1 class is the label's, or with a teacher's outputs as ``targets``
    (labels appended where mixed in) the teacher's (the share of positions, per sample)."""
    if not targets.is_floating_point():
        return (logits.argmax(1) == targets).sum()
    teacher = targets[..., : logits.shape[-1]].argmax(-1)
    return (logits.argmax(-1) == teacher).double().mean() * len(targets)


def _check_finite(loss: torch.Tensor, *, epoch: int, step: int, lr: float) -> None:
    """Raise LossError on every process if the loss of any process is NaN or infinite."""
    losses = distributed.all_gather(loss.reshape(1)).flatten()
    bad = losses[~torch.isfinite(losses)]
    if len(bad):
        raise LossError(
            f"training loss became {bad[0].item()} at epoch {epoch + 1}, step {step} with lr "
            f"{lr:.3g}; lower the learning rate (e.g. lr={lr / 10:.3g}) or check the data."
        )


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    *,
    config: TrainConfig,
    history: list[dict[str, float]],
) -> None:
    """Write the training state (atomically: a half-written file never replaces a good one)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": len(history),
        "history": history,
        "config": asdict(config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    *,
    config: TrainConfig,
    device: torch.device,
) -> list[dict[str, float]]:
    """Restore the state saved by :func:`_save_checkpoint`; returns the history so far."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a damaged file fails in many ways inside the unpickler
        raise ModelError(
            f"cannot read checkpoint '{path}' ({first_line(err)}); delete it to start over."
        ) from err
    keys = ("model", "optimizer", "scheduler", "history", "config")
    if not isinstance(state, dict) or not all(key in state for key in keys):
        raise ModelError(f"'{path}' is not a training checkpoint; delete it to start over.")
    changed = [
        f"{name}={old!r} (now {getattr(config, name)!r})"
        for name, old in state["config"].items()
        if getattr(config, name, None) != old
    ]
    if changed:
        raise ConfigError(
            f"checkpoint '{path}' was written with {', '.join(changed)}; resume with the "
            "same options, or start over without resume."
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ModelError(
            f"checkpoint '{path}' does not fit this model ({first_line(err)}); "
            "resume with the model it was trained from."
        ) from err
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["history"]
