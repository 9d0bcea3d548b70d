"""Where a job's model comes from: a folder gfsprune wrote, or a description the user gives.

A folder is a trained model (``model.json`` + ``model.safetensors``) or a pruned model
(``plan.json`` + ``model.safetensors``); either records the model's
:class:`~gfsprune.io.model_info.ModelInfo` (spec, options, data, input shape), so it is
rebuilt without options. A :class:`~gfsprune.io.model_info.ModelInfo` the user gives names
the model directly (any source of :func:`gfsprune.models.get`, the command line's
``--model``), with the user's weights; :func:`open_spec` completes it from the data. A
recorded spec that runs the user's code is rebuilt only when the user names it again
(``model=``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from torch import nn

from gfsprune import models
from gfsprune.errors import ConfigError, DataError, FileFormatError, ModelError
from gfsprune.io.model_info import MODEL_FILE, ModelInfo, read_model_info, saved_model_info
from gfsprune.io.saved import PLAN_FILE, WEIGHTS_FILE, load, read_plan
from gfsprune.models.weights import load_weights
from gfsprune.workflow.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    is_tokens,
    load_data,
    resizable,
)
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.text import load_text

__all__ = ["file_digest", "load_bundle", "load_model", "open_spec"]

_FOLDER_FIX = "pass a folder written by `gfsprune train`, `prune` or `finetune`"


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_spec(
    request: ModelInfo,
    *,
    data: str | None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """The model ``request`` describes (on the CPU, in eval mode), its completed description
    and its data.

    Args:
        request: The model's spec and what the user fixes of it: constructor options
            (``num_classes`` defaults to the data's class count), ``input_shape``, ``mean``
            and ``std``; the rest comes from the model's source and the data.
        data: The data spec (``request.data`` where ``None``).
        weights: A ``.safetensors`` file or PyTorch weights file to start from (``None``: fresh
            weights from ``seed``); the description records its SHA-256.
        seed: Seeds the fresh initialisation.

    Raises:
        ConfigError: no data, an unknown spec or option, or sizes that do not fit the data.
        FileFormatError, ModelError: the weights file is damaged or does not fit.
    """
    data = data or request.data
    if data is None:
        raise ConfigError(
            f"a model given by its spec ({request.name!r}) needs data; pass it (data=)"
        )
    weights = None if weights is None else Path(weights)
    if is_tokens(data):
        return _open_text(request, data, weights, seed)
    mean, std = request.mean, request.std
    if resizable(data):
        known = models.data_config(request.name)
        shape = request.input_shape or known.get("input_size")
        if mean is None and std is None:
            mean, std = known.get("mean", IMAGENET_MEAN), known.get("std", IMAGENET_STD)
        bundle = load_data(data, image_size=_square_side(shape), mean=mean, std=std)
    else:
        bundle = load_data(data, mean=mean, std=std)  # refuses mean/std with a reason
    classes = request.options.get("num_classes")
    if bundle.labelled and classes not in (None, bundle.num_classes):
        raise DataError(
            f"the model is asked for {classes} classes (num_classes=) but data {data!r} has "
            f"{bundle.num_classes}; pass {bundle.num_classes}, or data with {classes} classes"
        )
    shape = tuple(request.input_shape or bundle.input_shape)
    options = {**request.options, "in_channels": shape[0], "image_size": shape[-1]}
    if classes or bundle.labelled:  # unlabelled data: the model's own classes
        options["num_classes"] = classes or bundle.num_classes
    info = dataclasses.replace(
        request,
        options=options,
        data=data,
        input_shape=shape,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
    )
    check_fits(bundle, info)
    model, info = _build_spec(info, weights, seed)
    return model, info, bundle


def _build_spec(info: ModelInfo, weights: Path | None, seed: int) -> tuple[nn.Module, ModelInfo]:
    """The model ``info`` describes (in eval mode), with the user's ``weights``; ``info``
    with their digest."""
    with seeded(seed):
        model = info.build(spec=info.name)  # the user named it: consent to run its code
    if weights is not None:
        models.load_weights(model, weights)  # first: its errors name a missing file
        info = dataclasses.replace(info, weights=_weights_digest(weights))
    return model.eval(), info


def _open_text(
    request: ModelInfo, data: str, weights: Path | None, seed: int
) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """:func:`open_spec` for ``text:FILE`` data: tokenised by the model's own tokenizer, in
    samples of ``input_shape`` (one number, tokens) or the default length."""
    shape = request.input_shape
    if shape is not None and len(shape) != 1:
        raise ConfigError(
            f"text data takes one number of tokens per sample as the input shape; got "
            f"{','.join(map(str, shape))}. Pass one number (input_shape=), e.g. 128"
        )
    if request.mean is not None or request.std is not None:
        raise ConfigError("mean and std apply to images, not to text; leave them out")
    bundle = load_text(data, model=request.name, length=shape[0] if shape else None)
    options = dict(request.options)
    if bundle.labelled and "num_classes" in models.data_config(request.name):
        options["num_classes"] = options.get("num_classes") or bundle.num_classes  # a classifier
    info = dataclasses.replace(
        request, options=options, data=data, input_shape=tuple(bundle.input_shape)
    )
    check_fits(bundle, info)
    model, info = _build_spec(info, weights, seed)
    return model, info, bundle


def _square_side(shape: tuple[int, ...] | None) -> int | None:
    if shape is None:
        return None
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(
            f"image data is resized to square images, so the input shape must be C,S,S; got "
            f"{','.join(map(str, shape))}. Pass a square one (input_shape=), e.g. 3,224,224"
        )
    return shape[1]


def _weights_digest(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError as err:
        raise ConfigError(
            f"cannot read weights file '{path}' ({err.strerror or err}); check the path"
        ) from err


def load_bundle(spec: str | None, info: ModelInfo) -> DataBundle:
    """The data set ``spec`` (default: the model's own), sized, normalised and checked to fit
    the model."""
    data = spec or info.data
    if data is None:
        raise DataError(
            f"the model {info.name!r} does not record the data it was pruned on; pass it (data=)"
        )
    if is_tokens(data):
        bundle = load_text(data, model=info.name, length=info.input_shape[0])
        check_fits(bundle, info)
        return bundle
    sized = resizable(data) and len(info.input_shape) == 3
    if sized and info.input_shape[1] == info.input_shape[2]:
        bundle = load_data(data, image_size=info.input_shape[1], mean=info.mean, std=info.std)
    else:
        bundle = load_data(data)
    check_fits(bundle, info)
    return bundle


def check_fits(bundle: DataBundle, info: ModelInfo) -> None:
    """Raise DataError unless ``bundle``'s inputs and classes (where it has labels) are the
    model's."""
    classes = info.options.get("num_classes")
    if tuple(bundle.input_shape) != tuple(info.input_shape) or (
        classes is not None and bundle.labelled and bundle.num_classes != classes
    ):
        raise DataError(
            f"data {bundle.name!r} has inputs {tuple(bundle.input_shape)} in "
            f"{bundle.num_classes} classes but the model takes {tuple(info.input_shape)} in "
            f"{classes}; pass data like the model's own ({info.data!r})."
        )


def load_model(
    directory: str | os.PathLike, *, model: str | None = None
) -> tuple[nn.Module, ModelInfo]:
    """The model in a trained or a pruned model folder, on the CPU in eval mode.

    Args:
        directory: The folder.
        model: Build the base from this spec instead of the recorded one (needed, as the
            user's consent, where the recorded spec runs code).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model folder '{directory}' does not exist; {_FOLDER_FIX}.")
    if (directory / PLAN_FILE).is_file():
        path = directory / PLAN_FILE
        info = saved_model_info(read_plan(directory), path)
        return load(directory, _build(info, path, model)), info
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelError(
            f"'{directory}' holds neither {MODEL_FILE} nor {PLAN_FILE}; {_FOLDER_FIX}."
        )
    info = read_model_info(path)
    net = _build(info, path, model)
    try:
        load_weights(net, directory / WEIGHTS_FILE)
    except (FileFormatError, ModelError) as err:
        raise ModelError(f"{err}; the folder is incomplete or damaged.") from err
    return net.eval(), info


def _build(info: ModelInfo, path: Path, spec: str | None) -> nn.Module:
    try:
        return info.build(spec=spec)
    except ConfigError as err:
        raise ModelError(f"'{path}' names a model that cannot be built here: {err}") from err
    except ModelError as err:
        raise ModelError(f"'{path}': {err}") from err
