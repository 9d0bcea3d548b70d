"""Model sources: ``get(spec, **options)`` builds a freshly initialised network from a spec.

Specs:
    ``NAME``                     a zoo model (``resnet20``, ``digits_cnn``, ...; see ``names()``).
    ``torchvision:NAME``         a torchvision classifier, random weights.
    ``timm:NAME``                a timm model, random weights.
    ``hf:DIR``                   a local Hugging Face folder (``config.json`` + weights), offline.
    ``module.path:callable``     the user's own code: import the module, call the callable.
    ``path/to/file.py:callable`` the same from a file. These two **run the user's code**.

Each source is one :class:`ModelSource` registered by its prefix, so a new source is one class
added to ``_SOURCES``. Trained weights load with ``get(spec, weights=FILE)`` or
:func:`load_weights`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.models._layers import init_weights
from gfsprune.models._source import ModelSource
from gfsprune.models.code import UserCode
from gfsprune.models.external import Timm, Torchvision
from gfsprune.models.hf import HuggingFace
from gfsprune.models.weights import load_weights, read_state_dict
from gfsprune.models.zoo import Zoo

__all__ = [
    "ModelSource",
    "available",
    "data_config",
    "get",
    "init_weights",
    "load_weights",
    "names",
    "read_state_dict",
    "runs_code",
    "source_of",
]

_SOURCES: Mapping[str, ModelSource] = MappingProxyType(
    {source.prefix: source for source in (Zoo(), Torchvision(), Timm(), HuggingFace(), UserCode())}
)
#: The sources ``available`` and ``gfsprune models --source`` list.
LISTABLE = tuple(prefix for prefix, source in _SOURCES.items() if source.listable)
_SIZE_OPTIONS = ("num_classes", "in_channels", "image_size")


def source_of(spec: str) -> tuple[ModelSource, str]:
    """The source a spec names and the name it asks that source for.

    A registered prefix picks its source; any other ``TARGET:CALLABLE`` is user code; a spec
    without a colon is a zoo name.

    Example:
        >>> source, name = source_of("timm:resnet18")
        >>> source.prefix, name
        ('timm', 'resnet18')
    """
    prefix, colon, rest = spec.partition(":")
    if not colon:
        return _SOURCES["zoo"], spec
    if prefix in _SOURCES:
        return _SOURCES[prefix], rest
    return _SOURCES["code"], spec


def runs_code(spec: str) -> bool:
    """Whether building ``spec`` runs code the spec names (a file or module of the user's).

    Example:
        >>> runs_code("timm:resnet18"), runs_code("my_models.py:build")
        (False, True)
    """
    return source_of(spec)[0].runs_code


def names() -> list[str]:
    """The zoo's model names, sorted.

    Example:
        >>> "resnet20" in names()
        True
    """
    return _SOURCES["zoo"].names()


def available(source: str = "zoo", pattern: str = "*") -> list[str]:
    """The model specs ``get`` accepts from ``source`` (``LISTABLE``: "zoo", "torchvision" or
    "timm") whose name matches the shell-style ``pattern``, sorted.

    Example:
        >>> available("zoo", "resnet5*")
        ['resnet50', 'resnet56']
    """
    if source not in LISTABLE:
        raise ConfigError(f"unknown model source {source!r}; choose {', '.join(LISTABLE)}")
    found = _SOURCES[source].matching(pattern)
    return found if source == "zoo" else [f"{source}:{n}" for n in found]


def data_config(spec: str) -> dict[str, Any]:
    """What the model ``spec`` expects of its inputs where its source knows it: any of
    ``input_size`` (C, H, W), ``mean`` and ``std``, e.g. from timm's ``pretrained_cfg``.

    Example:
        >>> data_config("resnet20")
        {}
    """
    source, name = source_of(spec)
    return source.data_config(name)


def get(spec: str, *, weights: str | os.PathLike | None = None, **options: Any) -> nn.Module:
    """Build the model ``spec`` with ``options`` (``num_classes``, ``in_channels``, ...).

    ``image_size`` is accepted by every source so that callers can pass the data's shape
    uniformly; models that do not need it drop it. A ``module:callable`` or
    ``file.py:callable`` spec imports and runs that code.

    Args:
        spec: What to build (see the module docstring).
        weights: A ``.safetensors`` file or PyTorch weights file (``torch.save``) to load
            (:func:`load_weights`); without it the weights are freshly initialised (never
            downloaded).
        **options: The source's constructor options.

    Example:
        >>> import torch
        >>> get("resnet20", num_classes=10, image_size=32)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])

    Raises:
        ConfigError: unknown name (with close matches), unknown option, a size that is not a
            positive integer, or a source whose package does not import.
        FileFormatError: ``weights`` is missing or damaged.
        ModelError: ``weights`` do not fit the model (naming the keys).
    """
    for key in _SIZE_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"model option {key} must be a positive integer, got {value!r}; "
                f"pass the size of your data, e.g. {key}=10"
            )
    source, name = source_of(spec)
    model = source.build(name, **options)
    return model if weights is None else load_weights(model, weights)
