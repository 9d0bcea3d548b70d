"""Distillation for image models in the jobs: ``--distill`` on prune, finetune and compare.

With :class:`Distillation` a job's objective is the distance to the unpruned model's outputs
(:func:`gfsprune.distill`): KL divergence of the softened logits for a classifier, the mean
squared error for a feature extractor. Without labels (``images:DIR``) that is the whole
loss; with labels the job mixes them in as distillation users expect (Hinton et al., 2015):
``alpha * CE(labels) + (1 - alpha) * T^2 * KL``, ``alpha`` 0.5 unless given.

The teacher is the model the job started from. A pruned folder records where its weights
are (:func:`teacher_record`: the path and its SHA-256, or the seed of weights built by the
model's source), so ``finetune DIR --distill`` and
``eval DIR`` rebuild it without more flags; ``eval`` then reports top-1 agreement with it
and the KL divergence to it (:func:`agreement`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from gfsprune._inputs import model_device
from gfsprune.core.losses import DistillLoss, TeacherBatches
from gfsprune.errors import ConfigError, FileFormatError, ModelError
from gfsprune.io.model_info import ModelInfo
from gfsprune.models.weights import load_weights
from gfsprune.workflow.data import DataBundle, make_loader
from gfsprune.workflow.loading import file_digest
from gfsprune.workflow.seeding import seeded

__all__ = ["Distillation", "agreement", "load_teacher", "teacher_record"]

#: ``alpha`` where the data has labels and none is given.
DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class Distillation:
    """How a job distils from the unpruned model (``--distill`` and its options).

    Attributes:
        kind: ``"kl"`` (a classifier's logits), ``"mse"`` (a feature extractor's outputs) or
            ``"auto"``: ``kl`` where the model returns one row of logits per image
            ``(batch, classes)``, else ``mse``.
        temperature: Softens both distributions of ``kl``; the KL term is multiplied by its
            square (Hinton et al., 2015).
        alpha: The weight of the cross-entropy on the labels where the data has them
            (``None``: 0.5 with labels, 0 without); the distillation term weighs
            ``1 - alpha``. Labelled data with ``alpha=0`` distils on its images alone.
    """

    kind: Literal["auto", "kl", "mse"] = "auto"
    temperature: float = 1.0
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "kl", "mse"):
            raise ConfigError(f"'kind' must be 'auto', 'kl' or 'mse'. Got {self.kind!r} instead.")
        kind = "kl" if self.kind == "auto" else self.kind
        alpha = 0.0 if self.alpha is None or kind == "mse" else self.alpha
        temperature = self.temperature if kind == "kl" else 1.0
        DistillLoss(kind, temperature, alpha)  # checks the numbers

    def loss(self, model: nn.Module, bundle: DataBundle) -> DistillLoss:
        """The loss for ``model`` (whose outputs decide ``auto``) on ``bundle``.

        Raises:
            ConfigError: ``alpha > 0`` on data without labels.
        """
        kind = self.kind if self.kind != "auto" else _auto_kind(model, bundle)
        if kind == "mse":
            if self.alpha:
                raise ConfigError(
                    f"alpha (--distill-alpha) weighs labels against a classifier's logits; "
                    f"this model's outputs are distilled by MSE. Got {self.alpha}; leave it out"
                )
            return DistillLoss("mse")
        alpha = (DEFAULT_ALPHA if bundle.labelled else 0.0) if self.alpha is None else self.alpha
        if alpha and not bundle.labelled:
            raise ConfigError(
                f"alpha (--distill-alpha) weighs labels, but data {bundle.name!r} has none; "
                "leave it out"
            )
        return DistillLoss("kl", self.temperature, alpha)

    def batches(self, model: nn.Module, batches: Iterable, bundle: DataBundle) -> tuple:
        """``(data, loss_fn)`` for :func:`gfsprune.prune` or training: ``batches`` of
        ``bundle`` with ``model``'s outputs as targets (labels appended where ``alpha > 0``)."""
        loss_fn = self.loss(model, bundle)
        data = TeacherBatches(
            model, batches, labelled=bundle.labelled, keep_labels=bool(loss_fn.alpha)
        )
        return data, loss_fn

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {"kind": self.kind, "temperature": self.temperature, "alpha": self.alpha}


def _auto_kind(model: nn.Module, bundle: DataBundle) -> str:
    sample = bundle.test[0][0] if bundle.labelled else bundle.test[0]
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(sample.unsqueeze(0).to(device))
    finally:
        model.train(was_training)
    return "kl" if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else "mse"


def agreement(
    model: nn.Module,
    teacher: nn.Module,
    dataset: Dataset,
    *,
    labelled: bool,
    batch_size: int = 128,
) -> dict[str, float]:
    """How close ``model``'s outputs are to ``teacher``'s on ``dataset``, both in eval mode.

    Returns:
        For logits ``(batch, classes)``: ``agree``, the share of samples whose top-1 class
        is the teacher's, and ``kl``, the mean KL divergence from the teacher's class
        distribution to the model's (temperature 1); for other outputs ``mse``, their mean
        squared error.
    """
    device = model_device(model)
    teacher = teacher.to(device)
    totals = torch.zeros(3, dtype=torch.float64)  # agreeing, KL or squared-error sum, count
    modes = model.training, teacher.training
    model.eval(), teacher.eval()
    logits = True
    try:
        with torch.inference_mode():
            for batch in make_loader(dataset, batch_size=batch_size, shuffle=False):
                images = (batch[0] if labelled else batch).to(device)
                out, ref = model(images).float(), teacher(images).float()
                if out.shape != ref.shape:
                    raise ModelError(
                        f"the model's outputs {tuple(out.shape)} and the unpruned model's "
                        f"{tuple(ref.shape)} differ in shape; compare with the model it was "
                        "pruned from"
                    )
                logits = out.ndim == 2
                if logits:
                    totals[0] += float((out.argmax(1) == ref.argmax(1)).sum())
                    log_p, log_q = F.log_softmax(ref, 1), F.log_softmax(out, 1)
                    totals[1] += float(F.kl_div(log_q, log_p, log_target=True, reduction="sum"))
                    totals[2] += len(out)
                else:
                    totals[1] += float(F.mse_loss(out, ref, reduction="sum")) / out[0].numel()
                    totals[2] += len(out)
    finally:
        model.train(modes[0]), teacher.train(modes[1])
    count = float(totals[2]) or 1.0
    if logits:
        return {"agree": float(totals[0]) / count, "kl": float(totals[1]) / count}
    return {"mse": float(totals[1]) / count}


def teacher_record(weights: str | os.PathLike | None, *, seed: int) -> dict[str, Any]:
    """What a folder records of the model it was pruned from: its weights file's absolute
    path and SHA-256, or without one (a source that builds its own weights, or a fresh
    initialisation) the seed it was built with."""
    if weights is None:
        return {"weights": None, "sha256": None, "seed": seed}
    return {"weights": str(Path(weights).resolve()), "sha256": file_digest(weights), "seed": seed}


def load_teacher(
    info: ModelInfo, record: Mapping[str, Any], *, spec: str | None, where: Path
) -> nn.Module:
    """The unpruned model a folder was pruned from, as ``record`` (:func:`teacher_record`)
    says, in eval mode.

    Args:
        info: The folder's model description (the base architecture).
        record: What :func:`teacher_record` wrote.
        spec: Build from this spec (the user's consent to run code, as for the folder).
        where: The folder the record came from, named in errors.

    Raises:
        FileFormatError: the record is damaged.
        ModelError: the weights file is gone or changed since the folder was written.
    """
    path, digest, seed = record.get("weights"), record.get("sha256"), record.get("seed")
    if not (
        isinstance(seed, int)
        and (path is None or (isinstance(path, str) and isinstance(digest, str)))
    ):
        raise FileFormatError(
            f"'{where}' records the model it was pruned from (metadata 'teacher') without a "
            "weights path, digest and seed; prune it again."
        )
    if path is not None and not Path(path).is_file():
        raise ModelError(
            f"the unpruned model's weights '{path}' that '{where}' distils from are gone; "
            "put them back or prune again."
        )
    if path is not None and file_digest(path) != digest:
        raise ModelError(
            f"the unpruned model's weights '{path}' changed since '{where}' was written (SHA-256 "
            "differs); put the original back or prune again."
        )
    with seeded(seed):
        base = info.build(spec=spec)
    if path is not None:
        load_weights(base, Path(path))
    return base.eval()
