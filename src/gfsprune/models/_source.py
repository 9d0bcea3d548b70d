"""The model-source protocol: one small class per place models come from.

A source builds a network from the part of a spec after its prefix (``timm:resnet18`` asks
the ``timm`` source for ``resnet18``); :mod:`gfsprune.models` holds the registry by prefix.
"""

from __future__ import annotations

import difflib
import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from gfsprune.errors import ConfigError

__all__ = ["ModelSource", "unknown_name"]


class ModelSource(ABC):
    """Where models come from: the zoo, a package, a folder or the user's own code.

    Attributes:
        prefix: What a spec starts with to name this source (``"timm"`` for ``timm:NAME``).
        runs_code: Building runs code the spec names (a file or module of the user's); such a
            spec is never rebuilt from a folder gfsprune reads without the user's consent.
        listable: :meth:`names` lists what the source builds.
    """

    prefix: ClassVar[str]
    runs_code: ClassVar[bool] = False
    listable: ClassVar[bool] = True

    @abstractmethod
    def build(self, name: str, **options: Any) -> nn.Module:
        """A freshly initialised model ``name`` with ``options`` (``num_classes``, ...).

        Raises:
            ConfigError: unknown name or option (with close matches where there are some).
        """

    def names(self) -> list[str]:
        """Every name :meth:`build` accepts, sorted."""
        raise ConfigError(f"the {self.prefix} source cannot list its models")

    def data_config(self, name: str) -> dict[str, Any]:
        """What the model expects of its inputs, where the source knows it: any of
        ``input_size`` (C, H, W), ``mean`` and ``std`` (per channel), ``num_classes`` (a
        classifier's) and ``max_length`` (the most tokens a text model takes)."""
        del name
        return {}

    def matching(self, pattern: str) -> list[str]:
        """The names matching the shell-style ``pattern``, sorted."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]


def unknown_name(what: str, name: str, choices: Sequence[str], fix: str) -> ConfigError:
    """The one-line error for an unknown ``name``, with its close matches among ``choices``."""
    close = difflib.get_close_matches(name, choices, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(f"unknown {what} {name!r}; {hint}{fix}")
