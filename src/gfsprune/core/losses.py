"""Label-free distillation: pruning losses that compare with the unpruned model's outputs.

``prune(..., loss_fn=...)`` scores channel sets by ``loss_fn(outputs, targets)`` on
``(inputs, targets)`` mini-batches. :func:`distill` makes both: batches whose targets are a
frozen teacher's outputs on the same inputs, computed as each batch is drawn (so a streaming
loader works and nothing is stored), and the loss that compares with them. The calibration
data then needs no labels (issue 12).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gfsprune._inputs import model_device, model_inputs, move, run_model
from gfsprune.errors import ConfigError, ModelError

__all__ = ["DistillLoss", "TeacherBatches", "distill"]


@dataclass(frozen=True)
class DistillLoss:
    """``loss(outputs, targets)``: how far a student's outputs are from a teacher's.

    Attributes:
        kind: ``"kl"``: the Kullback-Leibler divergence from the teacher's softened class
            distribution to the student's, over the last dimension (the classes), averaged
            over the other positions and multiplied by ``temperature**2`` so that its size
            does not shrink with the temperature (Hinton et al., 2015); ``"mse"``: the mean
            squared error between the outputs (features or logits).
        temperature: Divides both logits before the softmax (``kl`` only; 1 for ``mse``).
        alpha: The weight of the cross-entropy on the labels (``kl`` only): the loss is
            ``alpha * CE(outputs, labels) + (1 - alpha) * distillation``. With ``alpha > 0``
            a batch's targets are the teacher's outputs with the labels appended as one more
            last column, as :class:`TeacherBatches` makes them with ``keep_labels=True``.
    """

    kind: Literal["kl", "mse"] = "kl"
    temperature: float = 1.0
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("kl", "mse"):
            raise ConfigError(f"'kind' must be 'kl' or 'mse'. Got {self.kind!r} instead.")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
            raise ConfigError(f"'temperature' must be a positive number. Got {t!r} instead.")
        if self.kind == "mse" and t != 1:
            raise ConfigError(
                f"'temperature' applies to kind='kl' only; leave it at 1 with kind='mse'. "
                f"Got {t!r} instead."
            )
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1:
            raise ConfigError(f"'alpha' must be a number in [0, 1]. Got {a!r} instead.")
        if self.kind == "mse" and a:
            raise ConfigError(
                f"'alpha' (the weight of the labels) applies to kind='kl' only, a classifier's "
                f"logits; leave it at 0 with kind='mse'. Got {a!r} instead."
            )

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The scalar loss of a batch; ``outputs`` and ``targets`` have the same shape (with
        ``alpha > 0``, ``targets`` has one more last column: the labels)."""
        if self.alpha:
            labels = targets[..., -1].long()
            targets = targets[..., :-1]
            hard = F.cross_entropy(outputs.flatten(0, -2), labels.flatten())
            return self.alpha * hard + (1 - self.alpha) * self._soft(outputs, targets)
        return self._soft(outputs, targets)

    def _soft(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape != targets.shape:
            raise ModelError(
                f"the student's outputs {tuple(outputs.shape)} and the teacher's "
                f"{tuple(targets.shape)} differ in shape; distil from the unpruned model."
            )
        if self.kind == "mse":
            return F.mse_loss(outputs, targets)
        dtype = torch.promote_types(outputs.dtype, torch.float32)  # float64 stays float64
        student = F.log_softmax(outputs.to(dtype) / self.temperature, dim=-1)
        teacher = F.log_softmax(targets.to(dtype) / self.temperature, dim=-1)
        # sum over the classes of p_t (log p_t - log p_s), averaged over the other positions
        per_position = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
        return per_position.mean() * self.temperature**2


class TeacherBatches:
    """Re-iterable ``(inputs, teacher outputs)`` mini-batches over re-iterable ``batches``.

    The teacher is a frozen copy (eval mode, no gradients) made when this object is built, so
    later changes to the original model do not change the targets. Each pass over this object
    is one pass over ``batches``; the targets stay on the teacher's device. With
    ``keep_labels`` (labelled batches), the labels are appended to the teacher's outputs as
    one more last column (what :class:`DistillLoss` with ``alpha > 0`` reads).
    """

    def __init__(
        self, teacher: nn.Module, batches: Iterable, *, labelled: bool, keep_labels: bool = False
    ) -> None:
        if keep_labels and not labelled:
            raise ConfigError("keep_labels=True needs labelled batches (labelled=True).")
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.batches = batches
        self.labelled = labelled
        self.keep_labels = keep_labels

    def __iter__(self) -> Iterator[tuple[object, torch.Tensor]]:
        device = model_device(self.teacher)
        for batch in self.batches:
            inputs = model_inputs(batch, labelled=self.labelled)
            # no_grad rather than inference_mode: the targets enter the student's autograd
            # graph when a first-order screen takes gradients of the loss.
            with torch.no_grad():
                outputs = run_model(self.teacher, move(inputs, device))
            if not isinstance(outputs, torch.Tensor):
                raise ModelError(
                    f"distillation needs a teacher that returns one tensor; "
                    f"{type(self.teacher).__name__} returned a {type(outputs).__name__}."
                )
            if self.keep_labels:
                labels = batch[1].to(outputs.device, outputs.dtype)
                outputs = torch.cat([outputs, labels.view(*outputs.shape[:-1], 1)], dim=-1)
            yield inputs, outputs


def distill(
    teacher: nn.Module,
    batches: Iterable,
    *,
    kind: Literal["kl", "mse"] = "kl",
    temperature: float = 1.0,
    labelled: bool = False,
    alpha: float = 0.0,
) -> tuple[TeacherBatches, DistillLoss]:
    """The data and loss that make :func:`gfsprune.prune` match ``teacher``'s outputs.

    Args:
        teacher: Usually the unpruned model itself; a frozen copy is used.
        batches: Re-iterable mini-batches of model inputs (a tensor, a tuple of positional
            arguments or a dict of keywords); no labels needed.
        kind: ``"kl"`` on logits or ``"mse"`` on outputs (see :class:`DistillLoss`).
        temperature: Softens both distributions (``kl`` only).
        labelled: Every batch is an ``(inputs, labels)`` pair; the labels are dropped
            unless ``alpha > 0``.
        alpha: The weight of the cross-entropy on the labels (needs ``labelled``): the loss
            is ``alpha * CE + (1 - alpha) * temperature**2 * KL`` (Hinton et al., 2015).

    Returns:
        ``(data, loss_fn)`` to pass to ``prune`` as its ``data`` and ``loss_fn``.

    Example:
        >>> import gfsprune
        >>> net = gfsprune.models.get("digits_cnn")
        >>> images = [torch.randn(16, 1, 8, 8) for _ in range(2)]
        >>> data, loss_fn = distill(net, images, temperature=2.0)
        >>> result = gfsprune.prune(
        ...     net, data, images[0][:1], target=gfsprune.Macs(0.5), loss_fn=loss_fn,
        ...     progress=False,
        ... )
        >>> result.macs_after < result.macs_before
        True
    """
    loss_fn = DistillLoss(kind, temperature, alpha)
    keep = bool(alpha)
    return TeacherBatches(teacher, batches, labelled=labelled, keep_labels=keep), loss_fn
