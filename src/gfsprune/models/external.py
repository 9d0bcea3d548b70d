"""Models from torchvision or timm when those packages import: ``torchvision:NAME``, ``timm:NAME``.

Neither is a dependency of gfsprune: a torchvision wheel must match the installed torch build
exactly, so the zoo carries its own definitions and these are an optional bridge.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError

SOURCES = ("torchvision", "timm")


def _import(package: str, zoo: Sequence[str]) -> ModuleType:
    try:
        return importlib.import_module(package)
    # A build made for another torch fails at import with a RuntimeError (missing C++
    # operators), an OSError (missing shared library) or an AttributeError, not only ImportError.
    except (ImportError, RuntimeError, OSError, AttributeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"{package} is not importable here ({reason}); install a {package} build matching "
            f"your torch, or use a zoo model: {', '.join(zoo)}"
        ) from err


def build(
    source: str,
    name: str,
    *,
    zoo: Sequence[str],
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build ``name`` from ``source`` ("torchvision" or "timm") without pretrained weights.

    ``image_size`` is accepted for a uniform call and not passed on: the CNNs of both packages
    pool adaptively. Other ``options`` go to the package's constructor unchanged.

    Raises:
        ConfigError: the package does not import, has no such model, or rejects an option.
    """
    del image_size
    package = _import(source, zoo)
    if source == "torchvision":
        if in_channels != 3:
            raise ConfigError(
                f"torchvision models take 3 input channels, got in_channels={in_channels}; "
                f"use a timm model (in_chans) or a zoo model: {', '.join(zoo)}"
            )
        construct = functools.partial(package.models.get_model, name, weights=None)
    else:
        if not package.is_model(name):
            raise ConfigError(
                f"timm has no model {name!r}; see timm.list_models() for the available names"
            )
        construct = functools.partial(
            package.create_model, name, pretrained=False, in_chans=in_channels
        )
    try:
        return construct(num_classes=num_classes, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{source} could not build {name!r} with num_classes={num_classes} and "
            f"options {options}: {err}; check the name and options against {source}'s docs"
        ) from err


def list_names(source: str, *, zoo: Sequence[str]) -> list[str]:
    """The classification models ``source`` ("torchvision" or "timm") can build, sorted.

    Raises:
        ConfigError: the package does not import here.
    """
    package = _import(source, zoo)
    if source == "torchvision":
        return sorted(package.models.list_models(module=package.models))
    return sorted(package.list_models())
