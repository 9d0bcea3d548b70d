"""The exception hierarchy: one base, each subclass also the matching builtin."""

from __future__ import annotations


class GfsPruneError(Exception):
    """Base class of every error gfsprune raises on purpose."""


class ConfigError(GfsPruneError, ValueError):
    """An argument or option has an invalid value."""


class ModelError(GfsPruneError, ValueError):
    """A model cannot be traced, pruned, saved or loaded as asked."""


class DataError(GfsPruneError, ValueError):
    """A data set is missing, malformed or does not match the model."""


class LossError(GfsPruneError, ValueError):
    """A loss came out NaN or infinite."""


class FileFormatError(GfsPruneError, ValueError):
    """A file gfsprune reads is missing, damaged, or not of the expected kind."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (``""`` for an empty one), for one-line errors
    that quote what a library raised.

    Example:
        >>> first_line(RuntimeError("size mismatch" + chr(10) + "  details"))
        'size mismatch'
    """
    return (str(err).strip().splitlines() or [""])[0]
