"""How to rebuild a model: ``model.json`` of a trained model folder, and the same fields in
the metadata of a pruned model's ``plan.json``.

:func:`read_model_info` and :func:`model_info` are the one reader of these fields: every size
is bounded before a network is built, so a damaged file fails in one line instead of
allocating a billion-class classifier. A recorded spec that runs code (``file.py:callable``,
``module:callable``) is never built on the file's word: :meth:`ModelInfo.build` refuses it
unless the caller names the spec itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gfsprune import models
from gfsprune.errors import ModelError
from gfsprune.io.schema import Fields, read_json

__all__ = ["MODEL_FILE", "ModelInfo", "model_info", "read_model_info", "saved_model_info"]

MODEL_FILE = "model.json"
FORMAT = "gfsprune-model"
# No data set has more classes, channels or pixels per side than this, nor an input with
# more values than _MAX_INPUT, and no zoo model is used wider than _MAX_WIDTH_MULT; larger
# numbers are damage, not models.
_MAX_SIZE = 1 << 16
_MAX_INPUT = 1 << 24
_MAX_WIDTH_MULT = 4
_SIZE_OPTIONS = ("num_classes", "in_channels", "image_size")
_MAX_SPEC = 4096  # characters of a model or data spec (a path and a name)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = "Pass a folder written by `gfsprune train`, `prune` or `finetune`."
# What a folder saved by gfsprune.save from Python needs in its metadata to be rebuilt.
_SAVE_EXAMPLE = (
    'gfsprune.save(result, DIR, metadata={"name": "resnet20", "options": {"num_classes": 10}, '
    '"data": "cifar10:/data/cifar"})'
)


@dataclass(frozen=True)
class ModelInfo:
    """How to rebuild a model, and what it was trained on: the one description of a model,
    whether a folder records it or the user names it.

    A description the user gives may leave out what the data decides (``input_shape``, the
    ``num_classes`` option, ``data``): a job completes it from its model source and data
    (:func:`gfsprune.workflow.loading.open_spec`) and records the completed one.

    Attributes:
        name: The model spec (``gfsprune.models.get``): a zoo name, ``torchvision:NAME``,
            ``timm:NAME``, ``hf:DIR``, ``module:callable`` or ``file.py:callable`` (the last
            two run the user's code).
        options: Its constructor options (``num_classes``, ``in_channels``, ...).
        data: The data spec it was trained or pruned on (``None``: unknown, pass one).
        input_shape: ``(C, H, W)`` of one input, or ``(L,)`` tokens of text (``None``: not
            known yet: the model's own where its source knows it, else the data's).
        pretrain: The pre-training ``TrainConfig`` fields (``{}`` if unknown; optional in
            the file).
        weights: The SHA-256 of the weights file the model started from (``None``: freshly
            initialised or trained by gfsprune; optional in the file).
        mean: Per-channel mean the images are normalised with (``None``: the data set's own,
            or for resizable images the model's own where known, else ImageNet's; optional in
            the file, as is ``std``).
        std: Per-channel standard deviation, with ``mean``.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    pretrain: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def build(self, *, spec: str | None = None) -> nn.Module:
        """A freshly initialised instance of the architecture.

        Args:
            spec: Build from this spec instead of :attr:`name`, with the recorded options: the
                user's own naming of a spec that runs code, which is never built otherwise.

        Raises:
            ModelError: :attr:`name` runs code and ``spec`` is not given.
        """
        if spec is None and models.runs_code(self.name):
            raise ModelError(
                f"the model is recorded as {self.name!r}, the user's own code, which gfsprune "
                f"does not run because a file names it; pass model={self.name!r} to run it"
            )
        return models.get(spec or self.name, **self.options)

    def example_inputs(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """One input to trace and count with: zeros ``(1, C, H, W)``, or for text data
        (``text:FILE``, its ``input_shape`` the tokens per sample) zero token ids and a full
        attention mask, ``(1, length)`` each."""
        if self.input_shape is None:
            raise ModelError(f"the input shape of {self.name!r} is not known yet; pass input_shape")
        if self.data is not None and self.data.startswith("text:"):
            ids = torch.zeros(1, *self.input_shape, dtype=torch.long)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return torch.zeros(1, *self.input_shape)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON (what :func:`model_info` reads)."""
        return dataclasses.asdict(self)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The model described by a ``model.json``; FileFormatError naming the file and field."""
    fields = read_json(path, fmt=FORMAT, fix=_FIX)
    fields["data"].text()  # optional in a plan's metadata only: a trained model was trained on data
    return model_info(fields)


def saved_model_info(plan: Mapping[str, Any], path: Path) -> ModelInfo:
    """The model a saved result was pruned from, as its plan's metadata records it.

    Args:
        plan: What ``gfsprune.io.saved.read_plan`` returned (the input shape defaults to its
            example inputs').
        path: The ``plan.json`` it came from, named in errors.

    Raises:
        ModelError: the metadata does not say which model (it was saved without it).
        FileFormatError: a field is damaged.
    """
    metadata = plan["metadata"]
    if not {"name", "options", "data", "input_shape"} & set(metadata):
        raise ModelError(
            f"'{path}' does not say which model it prunes (its metadata has no 'name'), so "
            f"it cannot be rebuilt from the folder alone. Save it with the model spec, e.g. "
            f"{_SAVE_EXAMPLE}, or pass the base: gfsprune.load(DIR, base_model)."
        )
    shape = plan["example_inputs"].get("shape")
    fix = f"Save it again with the model's description, e.g. {_SAVE_EXAMPLE}."
    return model_info(Fields(metadata, path, "metadata", fix), input_shape=shape and shape[1:])


def model_info(fields: Fields, *, input_shape: Sequence[int] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` fields of a JSON object (extra fields are ignored).

    Args:
        fields: The object.
        input_shape: The input shape where the object has none (a plan's example inputs).
    """
    options = fields.get("options") or Fields({}, fields.path, "options", fields.fix)
    for key, value in options.require(Mapping, "an object").items():
        option = options[key]
        if key in _SIZE_OPTIONS:
            option.integer(1, _MAX_SIZE)
        elif key == "width_mult":
            if not 0 < option.number() <= _MAX_WIDTH_MULT:
                raise option.fail(f"a number in (0, {_MAX_WIDTH_MULT}]")
        elif value is not None:
            option.require((str, int, float, bool), "a string, number or boolean")
    shape_field = fields.get("input_shape")
    if shape_field is None and input_shape is None:
        shape_field = fields["input_shape"]  # missing: the error names it
    if shape_field is not None:
        shape = tuple(item.integer(1, _MAX_SIZE) for item in shape_field.items(4))
    else:
        shape = tuple(input_shape or ())
    if not shape or math.prod(shape) > _MAX_INPUT:
        raise (shape_field or fields).fail(f"1 to 4 sizes with at most {_MAX_INPUT:,} values")
    pretrain = fields.get("pretrain") or Fields({}, fields.path, "pretrain", fields.fix)
    for key in pretrain.require(Mapping, "an object"):
        pretrain[key].require((int, float, bool), "a number or boolean (a training option)")
    return ModelInfo(
        name=_spec(fields["name"]),
        options=dict(options.value),
        data=_optional(fields, "data", _spec),
        input_shape=shape,
        pretrain=dict(pretrain.value),
        weights=_optional(fields, "weights", _digest),
        mean=_optional(fields, "mean", lambda f: _stats(f, shape, positive=False)),
        std=_optional(fields, "std", lambda f: _stats(f, shape, positive=True)),
    )


def _optional(fields: Fields, key: str, read: Callable[[Fields], Any]) -> Any:
    """``read`` of the field ``key``, or ``None`` where it is absent or null."""
    field = fields.get(key)
    return None if field is None or field.value is None else read(field)


def _spec(field: Fields) -> str:
    text = field.text()
    if not text or len(text) > _MAX_SPEC:
        raise field.fail(f"a spec of 1 to {_MAX_SPEC} characters")
    return text


def _digest(field: Fields) -> str:
    text = field.text()
    if not _SHA256.fullmatch(text):
        raise field.fail("a SHA-256 digest (64 lowercase hex digits)")
    return text


def _stats(field: Fields, shape: tuple[int, ...], *, positive: bool) -> tuple[float, ...]:
    """A per-channel statistic: one finite number per input channel (``shape[0]``)."""
    values = tuple(item.number(positive=positive) for item in field.items(_MAX_SIZE))
    if len(values) != shape[0]:
        raise field.fail(f"{shape[0]} numbers, one per input channel")
    return values
