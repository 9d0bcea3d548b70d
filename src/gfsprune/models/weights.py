"""Loading trained weights from a file into a model, with one readable error on mismatch.

``.safetensors`` files are read as they are; anything else is a PyTorch weights file
(``torch.save``) read with ``torch.load(weights_only=True)``, which builds tensors and plain
containers only and refuses any other object a pickle names. Such a file may be a bare state
dict or hold one under ``state_dict`` or ``model``; the ``module.`` prefix of
``DataParallel`` and a ``model.`` prefix are stripped where the model's own names lack them.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gfsprune.errors import FileFormatError, ModelError, first_line

__all__ = ["load_weights", "read_state_dict"]

_NESTED = ("state_dict", "model")
_PREFIXES = ("module.", "model.")
_SHOWN = 3  # keys named per kind of mismatch


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a PyTorch weights file, on the CPU.

    Raises:
        FileFormatError: the file is missing, damaged, or holds no state dict.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"state_dict": nn.Linear(2, 1).state_dict()}, path)
        >>> sorted(read_state_dict(path))
        ['bias', 'weight']
    """
    path = Path(path)
    fix = "pass a .safetensors file or a weights file written by torch.save"
    if not path.is_file():
        raise FileFormatError(f"weights file '{path}' does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            loaded: object = load_file(path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as err:
        reason = first_line(err) or type(err).__name__
        raise FileFormatError(
            f"weights file '{path}' is damaged or not weights ({reason}); {fix}"
        ) from err
    except (RuntimeError, OSError, ValueError) as err:
        reason = first_line(err) or type(err).__name__
        raise FileFormatError(f"cannot read weights file '{path}' ({reason}); {fix}") from err
    if isinstance(loaded, Mapping):
        nested = next((loaded[k] for k in _NESTED if isinstance(loaded.get(k), Mapping)), None)
        loaded = loaded if nested is None else nested
    if not isinstance(loaded, Mapping) or not loaded:
        raise FileFormatError(f"weights file '{path}' holds no state dict; {fix}")
    bad = next((k for k, v in loaded.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise FileFormatError(
            f"weights file '{path}' holds {type(loaded[bad]).__name__} {bad!r} among its "
            f"tensors; {fix} (a bare state dict, or one under {' or '.join(_NESTED)})"
        )
    return dict(loaded)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return it.

    Every tensor of the model must be in the file with its shape, and nothing else may be
    there (BatchNorm's ``num_batches_tracked``, which older weights files lack, excepted).

    Raises:
        FileFormatError: the file is missing or damaged (see :func:`read_state_dict`).
        ModelError: the weights do not fit: one message with the missing keys, unexpected
            keys and shape differences (the first few of each, with counts).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"module.weight": torch.ones(1, 2), "module.bias": torch.zeros(1)}, path)
        >>> load_weights(nn.Linear(2, 1), path).weight.tolist()
        [[1.0, 1.0]]
    """
    own = model.state_dict()
    weights = _strip_prefixes(read_state_dict(path), own)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in weights:
            weights[key] = value
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{len(keys)} {what} ({', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape differences", shapes),
        )
        if keys
    ]
    if problems:
        raise ModelError(
            f"the weights in '{path}' do not fit the {type(model).__name__}: "
            f"{'; '.join(problems)}. Build the model the weights were trained as (the same "
            "architecture and num_classes)"
        )
    # The model's own state dict carries ``_metadata`` (module versions) that some modules'
    # loaders read (torchvision MNASNet); a file's state dict may not, so fill in its values.
    own.update(weights)
    model.load_state_dict(own, strict=True)
    return model


def _strip_prefixes(
    weights: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``weights`` without a prefix every key has and the model's own keys lack."""
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in weights) and not all(
            k.startswith(prefix) for k in own
        ):
            weights = {k.removeprefix(prefix): v for k, v in weights.items()}
    return weights
