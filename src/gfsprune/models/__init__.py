"""The model zoo: ``get(name, **options)`` builds a freshly initialised network by name.

Every zoo model is a plain ``nn.Module`` of conv+BN layers ending in an ``nn.Linear``
classifier, traceable by Torch-Pruning; its initialisation follows the caller's
``torch.manual_seed``. ``torchvision:NAME`` and ``timm:NAME`` build from those packages when
they import.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.models import external
from gfsprune.models._layers import init_weights
from gfsprune.models.mobilenet import mobilenet_v2, mobilenet_v3_small, proxylessnas_mobile
from gfsprune.models.resnet import resnet18, resnet20, resnet34, resnet50, resnet56
from gfsprune.models.small import digits_cnn
from gfsprune.models.vgg import vgg16_bn

__all__ = ["available", "get", "init_weights", "names"]

_ZOO: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        builder.__name__: builder
        for builder in (
            digits_cnn,
            mobilenet_v2,
            mobilenet_v3_small,
            proxylessnas_mobile,
            resnet18,
            resnet20,
            resnet34,
            resnet50,
            resnet56,
            vgg16_bn,
        )
    }
)

_SIZE_OPTIONS = ("num_classes", "in_channels", "image_size")


def names() -> list[str]:
    """The zoo's model names, sorted.

    Example:
        >>> "resnet20" in names()
        True
    """
    return sorted(_ZOO)


def available(source: str = "zoo", pattern: str = "*") -> list[str]:
    """The model specs ``get`` accepts from ``source`` ("zoo", "torchvision" or "timm") whose
    name matches the shell-style ``pattern``, sorted.

    Example:
        >>> available("zoo", "resnet5*")
        ['resnet50', 'resnet56']
    """
    if source == "zoo":
        found = names()
    elif source in external.SOURCES:
        found = [f"{source}:{n}" for n in external.list_names(source, zoo=names())]
    else:
        raise ConfigError(
            f"unknown model source {source!r}; choose zoo, {', '.join(external.SOURCES)}"
        )
    return [n for n in found if fnmatch.fnmatchcase(n.partition(":")[2] or n, pattern)]


def get(name: str, **options: Any) -> nn.Module:
    """Build the model ``name`` with ``options`` (``num_classes``, ``in_channels``, ...).

    ``image_size`` is accepted by every model so that callers can pass the data's shape
    uniformly; models that pool globally do not need it and drop it.

    Example:
        >>> import torch
        >>> get("resnet20", num_classes=10, image_size=32)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])

    Raises:
        ConfigError: unknown name, unknown option, a size that is not a positive integer, or
            ``torchvision:``/``timm:`` asked for where that package does not import.
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
    source, colon, external_name = name.partition(":")
    if colon and source in external.SOURCES:
        return external.build(source, external_name, zoo=names(), **options)
    builder = _ZOO.get(name)
    if builder is None:
        raise ConfigError(
            f"unknown model {name!r}; choose one of {', '.join(names())}, "
            "or 'torchvision:NAME' / 'timm:NAME'"
        )
    accepted = inspect.signature(builder).parameters
    if "image_size" not in accepted:
        options.pop("image_size", None)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {unknown[0]!r}; its options are {', '.join(accepted)}"
        )
    return builder(**options)
