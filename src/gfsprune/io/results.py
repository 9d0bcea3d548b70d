"""``results.json`` of a comparison: the base model's scores and one row per finished method.

``gfsprune compare`` rewrites it as each method finishes (``base`` is added at the end), so
an interrupted comparison resumes from the rows it holds. :func:`read_results` is its one
reader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gfsprune.io.latency import MeasuredLatency
from gfsprune.io.schema import Fields, read_json

__all__ = ["RESULTS_FILE", "read_results"]

RESULTS_FILE = "results.json"
# Besides these, the base and every row hold the measured latency (MeasuredLatency's fields).
_BASE = ("macs", "params")
_ROW = ("macs", "params", "seconds")
# per fine-tuning budget (epochs, as text): the test scores
_EPOCHS = "epochs"
# The test scores, each group where it applies (at least one): accuracy and loss on labelled
# data; with distillation the agreement with the unpruned model and the KL divergence to it,
# or the mean squared error of outputs other than logits. A row has them with "_pruned".
_GROUPS = (("acc", "loss"), ("agree", "kl"), ("mse",))
# A comparison at a latency budget: gfs's seconds at the budget's batch size (besides its
# "target" and "batch"), as its cost model measured and predicted them.
_BUDGET = tuple(
    f"latency{kind}_{when}" for kind in ("", "_predicted") for when in ("before", "after")
)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results in ``path``: ``{"methods": {name: row}}``, plus ``"base"`` when complete
    (and ``"budget"`` for a comparison at a latency budget).

    Raises:
        FileFormatError: Naming the file and the field that is damaged.
    """
    fix = "Delete it to run every method again."
    root = read_json(path, fix=fix)
    complete = "base" in root.value
    budget = ("budget",) if complete and "budget" in root.value else ()
    root.keys_exactly(*(("base", "methods", *budget) if complete else ("methods",)))
    methods = root["methods"]
    results: dict[str, Any] = {
        "methods": {name: _row(methods[name]) for name in methods.require(Mapping, "an object")}
    }
    if complete:
        results["base"] = _scores(root["base"], _BASE + _tests(root["base"], ""), latency=True)
    if budget:
        fields = root["budget"]
        fields.keys_exactly("target", "batch", *_BUDGET)
        results["budget"] = {
            "target": fields["target"].text(),
            "batch": fields["batch"].integer(1),
            **{key: fields[key].number(positive=True) for key in _BUDGET},
        }
    return results


def _row(fields: Fields) -> dict[str, Any]:
    """One method's row: its scores, and ``epochs``: ``{budget: {acc, loss}}`` per
    fine-tuning budget (a count of epochs, as text)."""
    row: dict[str, Any] = _scores(
        fields, _ROW + _tests(fields, "_pruned"), extra=(_EPOCHS,), latency=True
    )
    budgets = fields[_EPOCHS]
    row[_EPOCHS] = {}
    for budget in budgets.require(Mapping, "an object of fine-tuning budgets"):
        if not budget.isdigit():
            raise budgets[budget].fail("under a key that is a number of epochs")
        row[_EPOCHS][budget] = _scores(budgets[budget], _tests(budgets[budget], ""))
    return row


def _tests(fields: Fields, suffix: str) -> tuple[str, ...]:
    """The test-score fields present (each of :data:`_GROUPS` whole or not at all, the
    accuracy's where none is), with ``suffix``."""
    present = set(fields.require(Mapping, "an object"))
    keys = [
        f"{key}{suffix}"
        for group in _GROUPS
        if any(f"{key}{suffix}" in present for key in group)
        for key in group
    ]
    return tuple(keys or (f"{key}{suffix}" for key in _GROUPS[0]))


def _scores(
    fields: Fields, keys: tuple[str, ...], *, extra: tuple[str, ...] = (), latency: bool = False
) -> dict[str, float | int]:
    """Accuracies in [0, 1], counts as non-negative integers, losses and times finite; the
    ``extra`` fields must be there too, and are read by the caller; with ``latency``, the
    measured latency's fields as well."""
    measured = MeasuredLatency.keys(fields) if latency else ()
    fields.keys_exactly(*keys, *measured, *extra)
    scores: dict[str, float | int] = {}
    for key in keys:
        value = fields[key]
        if key in ("macs", "params"):
            scores[key] = value.integer(0)
        elif key.startswith(("acc", "agree")):
            scores[key] = value.number()
            if not 0 <= scores[key] <= 1:
                raise value.fail("an accuracy in [0, 1]")
        else:
            scores[key] = value.number()
    if latency:
        scores |= MeasuredLatency.read(fields).to_json()
    return scores
