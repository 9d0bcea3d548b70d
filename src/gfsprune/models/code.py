"""The user's own models: ``module.path:callable`` or ``path/to/file.py:callable``.

Building such a spec imports the module or runs the file, then calls the callable: it
executes the user's code, which is the point. gfsprune never does so for a spec it only read
from a folder (see ``ModelSource.runs_code``); the user names it again to consent.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError
from gfsprune.models._source import ModelSource

__all__ = ["UserCode"]

# Sizes every caller passes uniformly (the class count from the data); a callable that does
# not take them does without: a user's ``Net()`` fixes its own (issue 28).
_OPTIONAL = ("num_classes", "in_channels", "image_size")
_FORM = "'module.path:callable' or 'path/to/file.py:callable'"


class UserCode(ModelSource):
    """``TARGET:CALLABLE``: import TARGET (a module, or a ``.py`` file), call CALLABLE.

    The callable gets the options its signature accepts (all of them if it takes
    ``**kwargs``); ``num_classes``, ``in_channels`` and ``image_size`` are dropped where it
    does not take them, any other option it does not take is refused. It must return an
    ``nn.Module``."""

    prefix = "code"
    runs_code = True
    listable = False

    def build(self, name: str, **options: Any) -> nn.Module:
        target, colon, attribute = name.rpartition(":")
        if not colon or not target or not attribute:
            raise ConfigError(f"model spec {name!r} names no callable; write it as {_FORM}")
        module = _load(target, name)
        try:
            factory = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError as err:
            raise ConfigError(
                f"{target!r} has no {attribute!r} (model spec {name!r}); check the name"
            ) from err
        if not callable(factory):
            raise ConfigError(f"{attribute!r} in {target!r} is not callable (model spec {name!r})")
        model = factory(**_accepted(factory, options, name))
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"{name!r} returned a {type(model).__name__}, not a torch.nn.Module; return "
                "the model"
            )
        return model


def _load(target: str, spec: str) -> ModuleType:
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model file '{target}' of {spec!r} does not exist; check the path")
        # One module name per file, so two files named model.py do not replace each other.
        name = f"_gfsprune_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"model file '{target}' cannot be imported; name a .py file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"no module {target!r} (model spec {spec!r}): {err}; check PYTHONPATH, or name "
            "the file as path/to/file.py:callable"
        ) from err


def _accepted(factory: Any, options: dict[str, Any], spec: str) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass everything
        return options
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    kept = {k: v for k, v in options.items() if k in parameters or k not in _OPTIONAL}
    unknown = sorted(set(kept) - set(parameters))
    if unknown:
        raise ConfigError(
            f"{spec!r} takes no option {unknown[0]!r}; its parameters are "
            f"{', '.join(parameters) or 'none'}"
        )
    return kept
