"""Where a job's model comes from: a folder gfsprune wrote, or a model spec (``--model``).

A folder is a trained checkpoint (``model.json`` + ``model.safetensors``) or a pruned model
(``plan.json`` + ``model.safetensors``); either records the model spec, its options, the data
and the input shape, so it is rebuilt without flags. A :class:`ModelSpec` names the model
directly: any source of :func:`gfsprune.models.get`, with the user's weights. A recorded spec
that runs the user's code is rebuilt only when the user names it again (``model=``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
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

__all__ = ["ModelSpec", "file_digest", "load_bundle", "load_model", "open_spec"]

_FOLDER_FIX = "pass a folder written by `gfsprune train`, `prune` or `finetune`"


@dataclass(frozen=True)
class ModelSpec:
    """A model named by its spec instead of a folder (the command line's ``--model``).

    Attributes:
        spec: What :func:`gfsprune.models.get` builds: a zoo name, ``torchvision:NAME``,
            ``timm:NAME``, ``hf:DIR``, ``module:callable`` or ``file.py:callable`` (the last
            two run the user's code).
        weights: A ``.safetensors`` file or PyTorch checkpoint to start from (``None``: fresh
            weights from the job's seed).
        num_classes: Outputs of the classifier (``None``: the data's class count).
        input_shape: ``(C, H, W)`` of one input (``None``: the model's own where its source
            knows it, e.g. timm's ``pretrained_cfg``, else the data's).
        mean: Per-channel mean that resizable images (cifar10, imagefolder) are normalised
            with (``None``: the model's own where known, else ImageNet's); with ``std``.
        std: Per-channel standard deviation, with ``mean``.
    """

    spec: str
    weights: Path | None = None
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_spec(
    request: ModelSpec, *, data: str | None, seed: int = 0
) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """The model ``request`` names (on the CPU, in eval mode), its description and its data.

    Raises:
        ConfigError: no data, an unknown spec or option, or sizes that do not fit the data.
        FileFormatError, ModelError: the weights file is damaged or does not fit.
    """
    if data is None:
        raise ConfigError(
            f"a model given by its spec ({request.spec!r}) needs data to work on; pass --data "
            "(data= in Python)"
        )
    if is_tokens(data):
        return _open_text(request, data, seed)
    mean, std = request.mean, request.std
    if resizable(data):
        known = models.data_config(request.spec)
        shape = request.input_shape or known.get("input_size")
        if mean is None and std is None:
            mean, std = known.get("mean", IMAGENET_MEAN), known.get("std", IMAGENET_STD)
        bundle = load_data(data, image_size=_square_side(shape), mean=mean, std=std)
    else:
        bundle = load_data(data, mean=mean, std=std)  # refuses mean/std with a reason
    if bundle.labelled and request.num_classes not in (None, bundle.num_classes):
        raise DataError(
            f"the model is asked for {request.num_classes} classes (num_classes, "
            f"--num-classes) but data {data!r} has {bundle.num_classes}; pass "
            f"{bundle.num_classes}, or data with {request.num_classes} classes"
        )
    shape = tuple(request.input_shape or bundle.input_shape)
    options = {"in_channels": shape[0], "image_size": shape[-1]}
    if request.num_classes or bundle.labelled:  # unlabelled data: the model's own classes
        options["num_classes"] = request.num_classes or bundle.num_classes
    info = ModelInfo(
        request.spec,
        options,
        data,
        shape,
        {},
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
    )
    check_fits(bundle, info)
    model, info = _build_spec(request, info, seed)
    return model, info, bundle


def _build_spec(request: ModelSpec, info: ModelInfo, seed: int) -> tuple[nn.Module, ModelInfo]:
    """The model ``request`` names, as ``info`` describes it (in eval mode), with the user's
    weights; ``info`` with their digest."""
    with seeded(seed):
        model = info.build(spec=request.spec)  # the user named it: consent to run its code
    if request.weights is not None:
        models.load_weights(model, request.weights)  # first: its errors name a missing file
        info = dataclasses.replace(info, weights=_weights_digest(request.weights))
    return model.eval(), info


def _open_text(request: ModelSpec, data: str, seed: int) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """:func:`open_spec` for ``text:FILE`` data: tokenised by the model's own tokenizer, in
    samples of ``input_shape`` (one number, tokens) or the default length."""
    shape = request.input_shape
    if shape is not None and len(shape) != 1:
        raise ConfigError(
            f"text data takes one number of tokens per sample as the input size; got "
            f"{','.join(map(str, shape))}. Pass e.g. --input-size 128"
        )
    if request.mean is not None or request.std is not None:
        raise ConfigError(
            "mean and std (--mean, --std) apply to images, not to text; leave them out"
        )
    bundle = load_text(data, model=request.spec, length=shape[0] if shape else None)
    options = {}
    if bundle.labelled and "num_classes" in models.data_config(request.spec):
        options["num_classes"] = request.num_classes or bundle.num_classes  # a classifier
    elif request.num_classes is not None:
        options["num_classes"] = request.num_classes  # the model's source says if it applies
    info = ModelInfo(request.spec, options, data, tuple(bundle.input_shape), {})
    check_fits(bundle, info)
    model, info = _build_spec(request, info, seed)
    return model, info, bundle


def _square_side(shape: tuple[int, ...] | None) -> int | None:
    if shape is None:
        return None
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(
            f"image data is resized to square images, so the input size must be C,S,S; got "
            f"{','.join(map(str, shape))}. Pass e.g. --input-size 3,224,224"
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
            f"the model {info.name!r} does not record the data it was pruned on; pass --data "
            "(data= in Python)"
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
    """The model in a trained checkpoint or a pruned folder, on the CPU in eval mode.

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
        raise ModelError(f"{err}; the checkpoint is incomplete or damaged.") from err
    return net.eval(), info


def _build(info: ModelInfo, path: Path, spec: str | None) -> nn.Module:
    try:
        return info.build(spec=spec)
    except ConfigError as err:
        raise ModelError(f"'{path}' names a model that cannot be built here: {err}") from err
    except ModelError as err:
        raise ModelError(f"'{path}': {err}") from err
