"""The zoo: gfsprune's own conv+BN networks, built by name (``resnet20``, ``digits_cnn``, ...).

Every zoo model is a plain ``nn.Module`` of conv+BN layers ending in an ``nn.Linear``
classifier, traceable by Torch-Pruning; its initialisation follows the caller's
``torch.manual_seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.models._source import ModelSource, unknown_name
from gfsprune.models.mobilenet import mobilenet_v2, mobilenet_v3_small, proxylessnas_mobile
from gfsprune.models.resnet import resnet18, resnet20, resnet34, resnet50, resnet56
from gfsprune.models.small import digits_cnn
from gfsprune.models.vgg import vgg16_bn

__all__ = ["Zoo"]

_BUILDERS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
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


class Zoo(ModelSource):
    """The zoo's models; a spec without a prefix names one (``zoo:NAME`` works too)."""

    prefix = "zoo"

    def names(self) -> list[str]:
        return sorted(_BUILDERS)

    def build(self, name: str, **options: Any) -> nn.Module:
        """``image_size`` is accepted by every zoo model so that callers can pass the data's
        shape uniformly; models that pool globally drop it."""
        builder = _BUILDERS.get(name)
        if builder is None:
            raise unknown_name(
                "model",
                name,
                self.names(),
                f"choose one of {', '.join(self.names())}, or 'torchvision:NAME', "
                "'timm:NAME', 'hf:DIR', 'module:callable' or 'file.py:callable'",
            )
        accepted = inspect.signature(builder).parameters
        if "image_size" not in accepted:
            options.pop("image_size", None)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"model {name!r} has no option {unknown[0]!r}; its options are "
                f"{', '.join(accepted)}"
            )
        return builder(**options)
