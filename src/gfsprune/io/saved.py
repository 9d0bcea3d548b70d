"""Saving and loading pruned models without pickle, and exporting them to ONNX.

A saved result is a folder with ``plan.json`` (which channels each layer kept, the input
shapes to trace with, costs, free-form metadata) and ``model.safetensors`` (the pruned
weights). Loading rebuilds the smaller architecture by replaying the plan on a fresh
instance of the original model, then loads the weights, so no code is ever unpickled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from gfsprune._version import __version__
from gfsprune.errors import FileFormatError, ModelError
from gfsprune.io.atomic import write_atomic, write_json
from gfsprune.io.model_info import saved_model_info
from gfsprune.io.schema import Fields, read_json
from gfsprune.models.weights import load_weights
from gfsprune.plan import PruneResult
from gfsprune.surgery import prune_channels

__all__ = ["load", "read_plan", "save", "save_with_plan", "write_weights"]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = "gfsprune-plan"
_COSTS = ("macs_before", "macs_after", "params_before", "params_after")
# Bounds no real plan reaches; beyond them a plan.json is damaged and building its example
# inputs or channel lists would exhaust memory.
_MAX_WIDTH = 1 << 20
_MAX_INPUT = 1 << 26
_MAX_DEPTH = 8


def _describe(inputs: object) -> Any:
    """A JSON description (shape and dtype) of example inputs."""
    if isinstance(inputs, torch.Tensor):
        return {"shape": list(inputs.shape), "dtype": str(inputs.dtype).removeprefix("torch.")}
    if isinstance(inputs, Mapping):
        return {"kwargs": {k: _describe(v) for k, v in inputs.items()}}
    if isinstance(inputs, tuple | list):
        return {"args": [_describe(v) for v in inputs]}
    raise ModelError(f"example_inputs of type {type(inputs).__name__} cannot be saved.")


def _build(spec: Any) -> object:
    """Zero tensors matching a description written by ``_describe`` (checked by ``_inputs``)."""
    if "kwargs" in spec:
        return {k: _build(v) for k, v in spec["kwargs"].items()}
    if "args" in spec:
        return tuple(_build(v) for v in spec["args"])
    return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))


def save(
    result: PruneResult, directory: str | os.PathLike, *, metadata: Mapping | None = None
) -> Path:
    """Write ``plan.json`` and ``model.safetensors`` for a pruning result.

    Args:
        result: What :func:`gfsprune.prune` returned.
        directory: Created if missing; existing files of the same names are replaced.
        metadata: JSON-serialisable extras stored in the plan (e.g. how to build the base).

    Returns:
        The directory.
    """
    directory = Path(directory)
    plan = {
        "format": _FORMAT,
        "version": 1,
        "gfsprune": __version__,
        "architecture": type(result.model).__name__,
        "example_inputs": _describe(result.example_inputs),
        "layers": [
            {"name": p.name, "width": p.width, "kept": p.kept, "scale": p.scale}
            for p in result.plan
        ],
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "metrics_before": result.metrics_before,
        "metrics_after": result.metrics_after,
        "metadata": dict(metadata or {}),
    }
    return _write(directory, result.model, plan)


def save_with_plan(model: nn.Module, plan: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``model``, a pruned model whose channels another saved result chose (e.g. after
    fine-tuning it), in the :func:`save` format: that result's plan with the new weights.

    Args:
        model: The pruned model (the architecture ``plan`` describes).
        plan: What :func:`read_plan` returned for the other result (its ``metadata`` may be
            changed; the layers and costs are the model's).
        directory: Created if missing; existing files of the same names are replaced.

    Returns:
        The directory.
    """
    return _write(Path(directory), model, {**plan, "gfsprune": __version__})


def _write(directory: Path, model: nn.Module, plan: Mapping[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(directory / WEIGHTS_FILE, model)
    write_json(directory / PLAN_FILE, plan)
    return directory


def write_weights(path: str | os.PathLike, model: nn.Module) -> Path:
    """Write ``model``'s state dict as safetensors (on the CPU, atomically). Tied weights
    (GPT-2's embedding and output layer) are written once per key: safetensors refuses
    tensors that share memory, and loading fills the one shared parameter from both."""
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        weights[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return write_atomic(path, lambda tmp: save_file(weights, tmp))


def read_plan(directory: str | os.PathLike) -> dict:
    """The ``plan.json`` of a saved result, checked field by field.

    Raises:
        ModelError: If the folder has no ``plan.json``.
        FileFormatError: If it is damaged or not a gfsprune plan (naming the field).
    """
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        raise ModelError(
            f"No {PLAN_FILE} in '{directory}'; pass a folder written by gfsprune.save "
            "(or by `gfsprune prune`)."
        )
    root = read_json(path, fmt=_FORMAT, fix="Save the result again, or restore the file.")
    root["version"].integer(1, 1)
    layers = []
    for entry in root["layers"].items():
        width = entry["width"].integer(1, _MAX_WIDTH)
        kept = [item.integer(0, width - 1) for item in entry["kept"].items(width)]
        if not kept or len(set(kept)) != len(kept):
            raise entry["kept"].fail(f"a non-empty list of distinct channels of 0..{width - 1}")
        scale = entry["scale"].number(positive=True, at_most=width)  # width / kept at most
        layers.append({"name": entry["name"].text(), "width": width, "kept": kept, "scale": scale})
    return {
        "format": _FORMAT,
        "version": 1,
        "gfsprune": root["gfsprune"].text(),
        "architecture": root["architecture"].text(),
        "example_inputs": _inputs(root["example_inputs"]),
        "layers": layers,
        **{key: root[key].integer(0) for key in _COSTS},
        **{key: _metrics(root.get(key)) for key in ("metrics_before", "metrics_after")},
        "metadata": dict(root["metadata"].require(Mapping, "an object")),
    }


def _metrics(field: Fields | None) -> dict[str, float]:
    """A result's recorded metrics, name to number (none in plans saved before they were
    recorded)."""
    if field is None:
        return {}
    return {key: field[key].number() for key in field.require(Mapping, "an object")}


def _inputs(spec: Fields, depth: int = 0) -> dict:
    """A checked ``example_inputs`` description: a tensor, or args/kwargs of them."""
    if depth > _MAX_DEPTH:
        raise spec.fail(f"inputs nested at most {_MAX_DEPTH} deep")
    spec.require(Mapping, "an object")
    if spec.get("kwargs") is not None:
        kwargs = spec["kwargs"]
        kwargs.require(Mapping, "an object")
        return {"kwargs": {key: _inputs(kwargs[key], depth + 1) for key in kwargs.value}}
    if spec.get("args") is not None:
        return {"args": [_inputs(item, depth + 1) for item in spec["args"].items()]}
    shape = [item.integer(0, _MAX_INPUT) for item in spec["shape"].items(8)]
    if math.prod(shape) > _MAX_INPUT:
        raise spec["shape"].fail(f"sizes with at most {_MAX_INPUT:,} values in all")
    dtype = spec["dtype"].text()
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise spec["dtype"].fail("a torch dtype name such as 'float32'")
    return {"shape": shape, "dtype": dtype}


def load(
    directory: str | os.PathLike, base_model: nn.Module | None = None, *, model: str | None = None
) -> nn.Module:
    """Rebuild a saved pruned model on ``base_model`` and load its weights.

    Args:
        directory: A folder written by :func:`save`.
        base_model: A fresh instance of the original (unpruned) architecture; not modified.
            Without it, the base is built from the model spec in the plan's metadata (what
            ``gfsprune prune`` records, or ``save(..., metadata={"name": SPEC, ...})``).
        model: Build the base from this spec instead of the recorded one; a recorded spec
            that runs code (``file.py:callable``) is only built when named here.

    Returns:
        The pruned model, in eval mode.

    Raises:
        ModelError: If the folder is incomplete, the base does not match the plan, or the
            plan does not say which model to build.
    """
    plan = read_plan(directory)
    if base_model is None:
        base_model = saved_model_info(plan, Path(directory) / PLAN_FILE).build(spec=model)
    if type(base_model).__name__ != plan["architecture"]:
        raise ModelError(
            f"The plan in '{directory}' was made for a {plan['architecture']}, but the base "
            f"model is a {type(base_model).__name__}; pass a fresh {plan['architecture']}."
        )
    example_inputs = _build(plan["example_inputs"])
    try:
        model = prune_channels(
            base_model,
            example_inputs,
            {entry["name"]: entry["kept"] for entry in plan["layers"]},
            widths={entry["name"]: entry["width"] for entry in plan["layers"]},
        )
    except ModelError as err:
        raise ModelError(f"The base model does not match the plan in '{directory}': {err}") from err
    weights_path = Path(directory) / WEIGHTS_FILE
    try:
        load_weights(model, weights_path)
    except FileFormatError as err:
        raise ModelError(f"{err}: the save is incomplete or damaged") from err
    except ModelError as err:
        raise ModelError(
            f"{err}; the base model does not fit the save with the plan applied: was it built "
            "with the same constructor arguments (classes, width)?"
        ) from err
    return model.eval()
