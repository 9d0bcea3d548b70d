"""Reading the JSON files gfsprune writes, checked field by field.

Each file format has one reader that uses these checks; every failure is a one-line
:class:`~gfsprune.errors.FileFormatError` naming the file, the field and what was expected,
so a damaged or foreign file never surfaces as a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gfsprune.errors import FileFormatError

__all__ = ["Fields", "read_json"]

# JSON files gfsprune writes are small; anything bigger is not one of ours.
_MAX_BYTES = 64 << 20


def read_json(path: str | os.PathLike, *, fmt: str | None = None, fix: str = "") -> Fields:
    """The JSON object in ``path`` (whose ``"format"`` field must be ``fmt`` when given).

    Args:
        path: The file.
        fmt: The expected value of its ``"format"`` field.
        fix: What the user can do, appended to every error message about this file.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise FileFormatError(f"'{path}' is not a regular file. {fix}".strip())
        if info.st_size > _MAX_BYTES:
            raise FileFormatError(f"'{path}' is larger than any file gfsprune writes. {fix}")
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileFormatError(f"'{path}' does not exist. {fix}".strip()) from err
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise FileFormatError(f"'{path}' is not valid JSON ({err}). {fix}".strip()) from err
    except OSError as err:
        raise FileFormatError(
            f"cannot read '{path}' ({err.strerror or err}). {fix}".strip()
        ) from err
    fields = Fields(value, path, "", fix)
    fields.require(Mapping, "an object")
    if fmt is not None and value.get("format") != fmt:
        raise FileFormatError(f"'{path}' is not a '{fmt}' file (its 'format' field). {fix}".strip())
    return fields


class Fields:
    """One JSON value inside a file, with checks that fail naming the file and the field."""

    def __init__(self, value: Any, path: Path, where: str, fix: str) -> None:
        self.value, self.path, self.where, self.fix = value, path, where, fix

    def fail(self, expected: str) -> FileFormatError:
        """The error for this field not being ``expected``."""
        where = f"field '{self.where}'" if self.where else "its content"
        got = repr(self.value)
        got = got if len(got) <= 40 else got[:37] + "..."
        return FileFormatError(
            f"'{self.path}' is damaged: {where} must be {expected}, got {got}. {self.fix}".strip()
        )

    def require(self, types: type | tuple[type, ...], expected: str) -> Any:
        """The value, which must be an instance of ``types`` (never a bool for numbers)."""
        if isinstance(self.value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            raise self.fail(expected)
        if not isinstance(self.value, types):
            raise self.fail(expected)
        return self.value

    def __getitem__(self, key: str | int) -> Fields:
        shown = key if not isinstance(key, str) or key.isprintable() else repr(key)
        where = f"{self.where}.{shown}" if isinstance(key, str) else f"{self.where}[{key}]"
        where = where.lstrip(".")
        if isinstance(key, str):
            obj = self.require(Mapping, "an object")
            if key not in obj:
                raise FileFormatError(
                    f"'{self.path}' is damaged: field '{where}' is missing. {self.fix}".strip()
                )
            return Fields(obj[key], self.path, where, self.fix)
        return Fields(self.require(list, "a list")[key], self.path, where, self.fix)

    def get(self, key: str) -> Fields | None:
        """The field ``key``, or ``None`` where it is absent."""
        return self[key] if key in self.require(Mapping, "an object") else None

    def keys_exactly(self, *keys: str) -> None:
        """Refuse missing and unexpected fields."""
        present = set(self.require(Mapping, "an object"))
        if present != set(keys):
            extra, missing = sorted(present - set(keys)), sorted(set(keys) - present)
            what = f"unexpected fields {extra}" if extra else f"missing fields {missing}"
            where = f"'{self.where}'" if self.where else "the file"
            raise FileFormatError(
                f"'{self.path}' is damaged: {where} has {what}. {self.fix}".strip()
            )

    def items(self, max_len: int | None = None) -> list[Fields]:
        """The elements of a list (at most ``max_len``)."""
        value = self.require(list, "a list")
        if max_len is not None and len(value) > max_len:
            raise self.fail(f"a list of at most {max_len} items")
        return [self[i] for i in range(len(value))]

    def integer(self, lo: int | None = None, hi: int | None = None) -> int:
        """An integer in ``[lo, hi]``."""
        value = self.require(int, "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(
                f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
            )
        return value

    def number(self, *, positive: bool = False, at_most: float | None = None) -> float:
        """A finite number (``positive``: greater than zero; at most ``at_most``)."""
        value = float(self.require((int, float), "a number"))
        if not math.isfinite(value) or (positive and value <= 0):
            raise self.fail("a positive finite number" if positive else "a finite number")
        if at_most is not None and value > at_most:
            raise self.fail(f"a number of at most {at_most:g}")
        return value

    def text(self) -> str:
        """A string."""
        return self.require(str, "a string")
