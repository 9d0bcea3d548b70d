"""Models from torchvision or timm when those packages import: ``torchvision:NAME``, ``timm:NAME``.

Neither is a dependency of gfsprune's core (they are its ``vision`` extra): a torchvision
wheel must match the installed torch build exactly. Both build without pretrained weights;
pass your own with ``weights=``.
"""

from __future__ import annotations

import importlib
from abc import abstractmethod
from types import ModuleType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError, first_line
from gfsprune.models._source import ModelSource, unknown_name

__all__ = ["Timm", "Torchvision"]


def _import(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    # A build made for another torch fails at import with a RuntimeError (missing C++
    # operators), an OSError (missing shared library) or an AttributeError, not only ImportError.
    except (ImportError, RuntimeError, OSError, AttributeError) as err:
        from gfsprune.models.zoo import Zoo  # the fix names the zoo, which always builds

        reason = first_line(err) or type(err).__name__
        raise ConfigError(
            f"{package} is not importable here ({reason}); install a {package} build matching "
            f"your torch (pip install 'gfsprune[vision]'), or use a zoo model: "
            f"{', '.join(Zoo().names())}"
        ) from err


class _Package(ModelSource):
    """A package's models with random weights: the name is checked (with close matches),
    then :meth:`_create` builds it; a TypeError or ValueError of the package's constructor
    (a bad option) becomes one ConfigError."""

    def build(
        self,
        name: str,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int | None = None,
        **options: Any,
    ) -> nn.Module:
        package = _import(self.prefix)
        if not self._known(package, name):
            raise unknown_name(
                f"{self.prefix} model",
                name,
                self.names(),
                f"see gfsprune.models.available({self.prefix!r})",
            )
        options = {"num_classes": num_classes, **options}
        sizes = {"in_channels": in_channels, "image_size": image_size}
        try:
            return self._create(package, name, {**sizes, **options})
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{self.prefix} could not build {name!r} with options {options}: {err}; check "
                f"the options against {self.prefix}'s docs"
            ) from err

    @abstractmethod
    def _known(self, package: ModuleType, name: str) -> bool:
        """Whether the package has a model ``name``."""

    @abstractmethod
    def _create(self, package: ModuleType, name: str, options: dict[str, Any]) -> nn.Module:
        """The model, from the package's own constructor; ``options`` holds ``num_classes``,
        ``in_channels`` and ``image_size`` (``None``: not given) besides the caller's."""


class Torchvision(_Package):
    """torchvision's classifiers (``torchvision.models.list_models``), random weights.

    ``image_size`` goes to the models whose input size is fixed, as their own option
    (``image_size`` of ``vit_*``, ``input_size`` of ``maxvit_t``), and is dropped for the
    others (they pool adaptively)."""

    # name prefix: the constructor's option for the input size (in its own form)
    _SIZES = {"vit_": lambda s: {"image_size": s}, "maxvit_": lambda s: {"input_size": (s, s)}}

    prefix = "torchvision"

    def names(self) -> list[str]:
        package = _import("torchvision")
        return sorted(package.models.list_models(module=package.models))

    def _known(self, package: ModuleType, name: str) -> bool:
        return name in package.models.list_models(module=package.models)

    def _create(self, package: ModuleType, name: str, options: dict[str, Any]) -> nn.Module:
        in_channels, size = options.pop("in_channels"), options.pop("image_size")
        for prefix, option in self._SIZES.items():
            if size is not None and name.startswith(prefix):
                options = {**option(size), **options}
        if in_channels != 3:
            raise ConfigError(
                f"torchvision models take 3 input channels, got in_channels={in_channels}; "
                "use a timm model (it adapts the first convolution) or a zoo model"
            )
        return package.models.get_model(name, weights=None, **options)


class Timm(_Package):
    """timm's models (``timm.list_models``), random weights (``pretrained=False`` always).

    ``in_channels`` becomes timm's ``in_chans``; ``image_size`` becomes ``img_size`` for the
    models whose input size is fixed (vision transformers), and is dropped for the others."""

    prefix = "timm"

    def names(self) -> list[str]:
        return sorted(_import("timm").list_models())

    def data_config(self, name: str) -> dict[str, Any]:
        timm = _import("timm")
        cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
        if cfg is None:
            return {}
        return {"input_size": tuple(cfg.input_size), "mean": tuple(cfg.mean), "std": tuple(cfg.std)}

    def _known(self, package: ModuleType, name: str) -> bool:
        return package.is_model(name)

    def _create(self, package: ModuleType, name: str, options: dict[str, Any]) -> nn.Module:
        in_channels, image_size = options.pop("in_channels"), options.pop("image_size")
        cfg = package.get_pretrained_cfg(name) if image_size is not None else None
        if cfg is not None and cfg.fixed_input_size:
            options = {"img_size": image_size, **options}
        return package.create_model(name, pretrained=False, in_chans=in_channels, **options)
