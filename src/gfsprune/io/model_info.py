"""How to rebuild a zoo model: ``model.json`` of a trained checkpoint, and the same fields in
the metadata of a pruned model's ``plan.json``.

:func:`read_model_info` and :func:`model_info` are the one reader of these fields: every size
is bounded before a network is built, so a damaged file fails in one line instead of
allocating a billion-class classifier.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gfsprune import models
from gfsprune.io.schema import Fields, read_json

__all__ = ["MODEL_FILE", "ModelInfo", "model_info", "read_model_info"]

MODEL_FILE = "model.json"
FORMAT = "gfsprune-model"
# No data set has more classes, channels or pixels per side than this, nor an input with
# more values than _MAX_INPUT, and no zoo model is used wider than _MAX_WIDTH_MULT; larger
# numbers are damage, not models.
_MAX_SIZE = 1 << 16
_MAX_INPUT = 1 << 24
_MAX_WIDTH_MULT = 4
_SIZE_OPTIONS = ("num_classes", "in_channels", "image_size")
_FIX = "Pass a folder written by `gfsprune train`, `prune` or `finetune`."


@dataclass(frozen=True)
class ModelInfo:
    """How to rebuild a zoo model, and what it was trained on.

    Attributes:
        name: The zoo name (``gfsprune.models.get``).
        options: Its constructor options (``num_classes``, ``in_channels``, ...).
        data: The data spec it was trained on.
        input_shape: ``(C, H, W)`` of one input.
        pretrain: The pre-training ``TrainConfig`` fields (``{}`` if unknown; optional in
            the file).
    """

    name: str
    options: dict[str, Any]
    data: str
    input_shape: tuple[int, ...]
    pretrain: dict[str, Any]

    def build(self) -> nn.Module:
        """A freshly initialised instance of the architecture."""
        return models.get(self.name, **self.options)

    def example_inputs(self) -> torch.Tensor:
        """One zero input, ``(1, C, H, W)``, to trace and count with."""
        return torch.zeros(1, *self.input_shape)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON (what :func:`model_info` reads)."""
        return dataclasses.asdict(self)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The model described by a ``model.json``; FileFormatError naming the file and field."""
    return model_info(read_json(path, fmt=FORMAT, fix=_FIX))


def model_info(fields: Fields) -> ModelInfo:
    """The :class:`ModelInfo` fields of a JSON object (extra fields are ignored)."""
    options = fields["options"]
    for key, value in options.require(Mapping, "an object").items():
        option = options[key]
        if key in _SIZE_OPTIONS:
            option.integer(1, _MAX_SIZE)
        elif key == "width_mult":
            if not 0 < option.number() <= _MAX_WIDTH_MULT:
                raise option.fail(f"a number in (0, {_MAX_WIDTH_MULT}]")
        elif value is not None:
            option.require((str, int, float, bool), "a string, number or boolean")
    shape = tuple(item.integer(1, _MAX_SIZE) for item in fields["input_shape"].items(4))
    if not shape or math.prod(shape) > _MAX_INPUT:
        raise fields["input_shape"].fail(f"1 to 4 sizes with at most {_MAX_INPUT:,} values")
    pretrain = fields.get("pretrain") or Fields({}, fields.path, "pretrain", fields.fix)
    for key in pretrain.require(Mapping, "an object"):
        pretrain[key].require((int, float, bool), "a number or boolean (a training option)")
    return ModelInfo(
        name=fields["name"].text(),
        options=dict(options.value),
        data=fields["data"].text(),
        input_shape=shape,
        pretrain=dict(pretrain.value),
    )
