"""The command line's selection flags, generated from :class:`gfsprune.PruneConfig`.

Every option of the config is a flag named after it (``round_to`` -> ``--round-to``), with
its help made from the config's own documentation (:func:`gfsprune.core.config.option_docs`)
and its default the config's default, except ``seed`` and ``device``, which the commands
offer for more than selection (``--seed``, ``--device``). ``candidates`` takes 0 for all;
``tuning`` is ``--tuning STEPS`` with the other fields of
:class:`~gfsprune.core.tuning.LayerTuning` as ``--tuning-lr`` and so on.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from gfsprune.core.config import CHOICES, GROUPS, PruneConfig, option_docs
from gfsprune.core.tuning import LayerTuning
from gfsprune.errors import ConfigError

__all__ = ["add_selection_flags", "selection_config"]

#: Options the commands set from flags of their own.
_ELSEWHERE = ("seed", "device")


def _plain(doc: str) -> str:
    """The first sentence of ``doc``, without reStructuredText markup."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", doc).replace("``", "")
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)(?<=[a-z0-9)])\. ", text, maxsplit=1)[0]
    return sentence.rstrip(".").replace("%", "%%")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_selection_flags(
    parser: argparse.ArgumentParser, *, leave_out: tuple[str, ...] = ()
) -> None:
    """Add a flag for every :class:`PruneConfig` option but ``leave_out`` (and ``seed`` and
    ``device``) to ``parser``, in one group per concern (:data:`~gfsprune.core.config.GROUPS`)."""
    default, docs = PruneConfig(), option_docs()
    for title, names in GROUPS.items():
        names = [n for n in names if n not in _ELSEWHERE and n not in leave_out]
        if names:
            group = parser.add_argument_group(title)
            for name in names:
                _add_flag(group, name, getattr(default, name), _plain(docs[name]))


def _add_flag(group: argparse._ArgumentGroup, name: str, value: object, help_text: str) -> None:
    """The flag of the option ``name``, whose default is ``value``."""
    if name == "tuning":
        _add_tuning(group, help_text)
    elif name == "candidates":
        group.add_argument(
            _flag(name), type=int, default=value, help=f"{help_text}; 0: all (default {value})"
        )
    elif isinstance(value, bool):
        group.add_argument(
            _flag(name),
            action=argparse.BooleanOptionalAction,
            default=value,
            help=f"{help_text} (default {'on' if value else 'off'})",
        )
    elif name in CHOICES:
        group.add_argument(
            _flag(name), choices=CHOICES[name], default=value, help=f"{help_text} (default {value})"
        )
    else:
        group.add_argument(
            _flag(name), type=type(value), default=value, help=f"{help_text} (default {value})"
        )


def _add_tuning(group: argparse._ArgumentGroup, help_text: str) -> None:
    docs = option_docs(LayerTuning)
    group.add_argument(
        "--tuning", type=int, metavar="STEPS", help=f"{help_text}; STEPS: {_plain(docs['steps'])}"
    )
    for field in dataclasses.fields(LayerTuning):
        if field.name != "steps":
            group.add_argument(
                _flag(f"tuning_{field.name}"),
                type=float,
                default=field.default,
                help=f"with --tuning: {_plain(docs[field.name])} (default {field.default})",
            )


def selection_config(args: argparse.Namespace, **options: object) -> PruneConfig:
    """The :class:`PruneConfig` of the flags :func:`add_selection_flags` added, and
    ``options`` (e.g. ``seed``, ``device``)."""
    values: dict[str, object] = {}
    for field in dataclasses.fields(PruneConfig):
        name = field.name
        if not hasattr(args, name) or name in options:
            continue
        value = getattr(args, name)
        if name == "candidates":
            if value < 0:
                raise ConfigError(
                    f"--candidates must be 0 (all) or a positive integer. Got {value}."
                )
            value = value or None
        elif name == "tuning" and value is not None:
            extra = {
                f.name: getattr(args, f"tuning_{f.name}")
                for f in dataclasses.fields(LayerTuning)
                if f.name != "steps"
            }
            value = LayerTuning(steps=value, **extra)
        values[name] = value
    return PruneConfig(**values, **options)
