"""The progress file of a pruning run: the finished layers, so an interrupted run resumes.

``prune(..., checkpoint=PATH)`` writes it after every layer. It records the run's settings
(model layers, target, options), the plan and trace of each finished layer, and how many
mini-batches were drawn. Reading it checks every field against the run that resumes it, so
that a damaged or foreign file is refused with one line instead of resuming a wrong plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gfsprune.errors import ConfigError
from gfsprune.io.atomic import write_json
from gfsprune.io.schema import Fields, read_json
from gfsprune.plan import LayerLog, LayerPlan

__all__ = ["Progress", "read_progress", "write_progress"]


@dataclass
class Progress:
    """What an interrupted run had finished.

    Attributes:
        plan: The finished layers, in selection order.
        logs: Their selection traces.
        drawn: Mini-batches drawn so far.
    """

    plan: list[LayerPlan] = field(default_factory=list)
    logs: list[LayerLog] = field(default_factory=list)
    drawn: int = 0


def read_progress(
    path: str | os.PathLike | None,
    settings: Mapping,
    layers: Sequence[tuple[str, int]],
    *,
    max_drawn: int,
) -> Progress:
    """The progress in ``path`` of a run with these ``settings``; empty where there is none.

    Args:
        path: The progress file, or ``None``.
        settings: The resuming run's settings; the file's must be equal.
        layers: ``(name, width)`` of the run's channel layers, in selection order.
        max_drawn: The most mini-batches a run over ``layers`` can draw.
    """
    if path is None or not Path(path).exists():
        return Progress()
    fix = "Delete it to start over, or choose another checkpoint path."
    root = read_json(path, fix=fix)
    root.keys_exactly("settings", "plan", "layers", "drawn")
    saved = root["settings"].require(Mapping, "an object")
    differs = sorted(k for k in {*settings, *saved} if saved.get(k) != settings.get(k))
    if differs:
        raise ConfigError(
            f"The checkpoint '{path}' was written by a run with other settings (they differ "
            f"in: {', '.join(differs)}); delete it or choose another checkpoint path."
        )
    plan = [
        _layer_plan(entry, *layers[i]) for i, entry in enumerate(root["plan"].items(len(layers)))
    ]
    logs = [
        _layer_log(entry, plan[i].name) for i, entry in enumerate(root["layers"].items(len(plan)))
    ]
    if len(logs) != len(plan):
        raise root["layers"].fail(f"a list of {len(plan)} layer traces (one per planned layer)")
    return Progress(plan, logs, root["drawn"].integer(0, max_drawn))


def _layer_plan(entry: Fields, name: str, width: int) -> LayerPlan:
    entry.keys_exactly("name", "width", "kept", "scale")
    if entry["name"].text() != name or entry["width"].integer() != width:
        raise entry.fail(f"layer '{name}' of width {width} (the model's layer at that place)")
    kept = [item.integer(0, width - 1) for item in entry["kept"].items(width)]
    if not kept or len(set(kept)) != len(kept):
        raise entry["kept"].fail(f"a non-empty list of distinct channels of 0..{width - 1}")
    # the mean-field rescale is width / kept, at most the width (1e308 overflowed the masks)
    return LayerPlan(name, width, kept, entry["scale"].number(positive=True, at_most=width))


def _layer_log(entry: Fields, name: str) -> LayerLog:
    entry.keys_exactly("name", "losses", "reference")
    if entry["name"].text() != name:
        raise entry["name"].fail(f"'{name}' (the planned layer at that place)")
    losses = [float(item.require((int, float), "a number")) for item in entry["losses"].items()]
    reference = entry["reference"]
    return LayerLog(name, losses, None if reference.value is None else reference.number())


def write_progress(
    path: str | os.PathLike,
    settings: Mapping,
    plan: Sequence[LayerPlan],
    logs: Sequence[LayerLog],
    drawn: int,
) -> None:
    """Write the progress file atomically (its folder is created where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": dict(settings),
        "plan": [asdict(p) for p in plan],
        "layers": [asdict(log) for log in logs],
        "drawn": drawn,
    }
    write_json(path, state)
