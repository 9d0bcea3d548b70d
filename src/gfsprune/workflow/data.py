"""Image-classification data sets chosen by a spec string, and reproducible loaders.

Specs (each prefix is one :class:`DataSource` in :data:`SOURCES`):
    ``digits``            scikit-learn's bundled 8x8 digits (1,797 images, no download).
    ``synthetic[:N]``     N generated 3x16x16 images in 10 classes (default 2,000), learnable.
    ``cifar10:DIR``       the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) in DIR.
    ``imagefolder:DIR``   ImageNet layout: ``DIR/train/CLASS/*.jpg|png`` and ``DIR/val/CLASS/*``.
    ``idx:DIR``           the four IDX files of MNIST's format in DIR (``train-images-idx3-ubyte``,
                          ``train-labels-idx1-ubyte``, ``t10k-...``; gzipped or not), with
                          their official train/test split; ``mnist:DIR`` and
                          ``fashion-mnist:DIR`` are the same.
    ``images:DIR``        image files under DIR at any depth, *without labels* (for
                          distillation): a fifth of the files (at least one, drawn with a fixed
                          seed) is held out, and each split yields random square crops (at
                          least 1,024 training and 256 held-out samples, a fixed set).
    ``text:FILE``         text, tokenised by a model's tokenizer (:mod:`gfsprune.workflow.text`).

``cifar10``, ``imagefolder`` and ``images`` are *resizable* (:func:`resizable`): their images
are resized to the model's input size (``image_size``) and normalised with the model's
``mean`` and ``std`` where given, else with the data set's own (CIFAR-10's, ImageNet's).

A labelled data set yields ``(image, label)`` with ``image`` a normalised float tensor
(C, H, W) and ``labels`` available as one tensor on the data set; an unlabelled one
(``labelled=False``) yields the image alone. Training augmentation (random crops and flips)
draws from torch's global generator, as torchvision's does; ``gfsprune.workflow.train.fit`` seeds
that generator once per epoch, which makes runs and resumed runs repeat exactly.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from gfsprune.errors import ConfigError, DataError, FileFormatError
from gfsprune.io.idx import read_idx
from gfsprune.io.unpickle import load_data_pickle

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "SPECS",
    "DataBundle",
    "DataOptions",
    "DataSource",
    "check_labels",
    "is_tokens",
    "load_data",
    "make_loader",
    "require_labels",
    "resizable",
    "source_of",
]

# Per-channel (mean, std) of the CIFAR-10 and ImageNet training sets, as in torchvision's
# recipes, shaped (3, 1, 1) to broadcast over an image; built once, they cost a third of the
# time of a CIFAR sample when built per call.
_CIFAR_STATS = torch.tensor([[0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]]).view(2, 3, 1, 1)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_IMAGENET_STATS = torch.tensor([IMAGENET_MEAN, IMAGENET_STD]).view(2, 3, 1, 1)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
# Image folders up to this many files are opened once at load time so that a bad file is
# reported before training starts; bigger ones are checked as each image is read.
_VERIFY_LIMIT = 5_000
_SYNTHETIC_DEFAULT, _SYNTHETIC_MIN = 2_000, 20
# images:DIR: the seed of its held-out split and of the held-out crops, and the fewest
# (train, test) samples its crops make.
_SPLIT_SEED = 0
_PHOTO_SAMPLES = (1_024, 256)


_Transform = Callable[[torch.Tensor], torch.Tensor]
_PilTransform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class DataBundle:
    """A train/test pair of image-classification data sets.

    Attributes:
        name: The spec the bundle was loaded from, e.g. ``"cifar10:/data/cifar"``.
        train: Training samples, augmented where the spec defines augmentation.
        test: Held-out samples, never augmented.
        num_classes: Labels lie in ``range(num_classes)`` (0 without labels).
        input_shape: ``(C, H, W)`` of one image after its transforms.
        labelled: A sample is ``(inputs, label)``; otherwise the inputs alone, and the data
            is for distillation only.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    labelled: bool = True


class _InMemory(Dataset):
    """Images held in one tensor (N, C, H, W); ``transform`` (if any) maps one image."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: _Transform | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (image if self.transform is None else self.transform(image)), int(self.labels[index])


class _ImageFolder(Dataset):
    """Image files read with Pillow on access; ``transform`` maps a PIL image to a tensor."""

    def __init__(self, samples: list[tuple[Path, int]], transform: _PilTransform) -> None:
        self.samples = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(_read_rgb(path)), label

    def verify(self) -> None:
        """Open every file once (headers only, cheap); raises DataError naming a bad file."""
        for path, _ in self.samples:
            with _opened(path):
                pass


class DataSource(ABC):
    """Where a data set comes from: one small class per spec prefix (``cifar10`` for
    ``cifar10:DIR``); :data:`SOURCES` holds them by prefix, :func:`load_data` dispatches.

    Attributes:
        prefix: What a spec starts with to name this source.
        usage: The spec's form, as help texts and errors show it (``"cifar10:DIR"``).
        takes_arg: Whether the spec has an argument after ``prefix:`` (``None``: optional).
        resizable: Its images take ``image_size``, ``mean`` and ``std``.
        tokens: Its samples are token ids, tokenised by a model's tokenizer (text), not images.
    """

    prefix: ClassVar[str]
    usage: ClassVar[str]
    takes_arg: ClassVar[bool | None] = True
    resizable: ClassVar[bool] = False
    tokens: ClassVar[bool] = False

    @abstractmethod
    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        """The train/test pair that ``spec`` names (``arg``: its argument, ``None`` if none).

        Raises:
            DataError: the files are missing or damaged (one line naming the file).
        """


@dataclass(frozen=True)
class DataOptions:
    """What a job asks of a data source besides the spec (see :func:`load_data`)."""

    seed: int = 0
    image_size: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    verify: bool | None = None


def source_of(spec: str) -> tuple[DataSource, str | None]:
    """The source that ``spec`` names and the spec's argument (``None`` without a colon).

    Raises:
        DataError: no source has the spec's prefix, or the argument is missing or extra.

    Example:
        >>> source, arg = source_of("cifar10:/data/cifar")
        >>> source.usage, arg
        ('cifar10:DIR', '/data/cifar')
    """
    prefix, sep, arg = spec.partition(":")
    source = SOURCES.get(prefix)
    if (
        source is None
        or (source.takes_arg is True and not arg)
        or (source.takes_arg is False and sep)
    ):
        raise DataError(f"unknown data spec {spec!r}; valid specs are {', '.join(SPECS)}.")
    return source, arg if sep else None


def resizable(spec: str) -> bool:
    """Whether ``spec``'s images take ``image_size``, ``mean`` and ``std`` (cifar10,
    imagefolder, images).

    Example:
        >>> resizable("cifar10:/data/cifar"), resizable("digits")
        (True, False)
    """
    source = SOURCES.get(spec.partition(":")[0])
    return source is not None and source.resizable


def is_tokens(spec: str | None) -> bool:
    """Whether ``spec`` names token data (``text:FILE``), tokenised by a model's tokenizer."""
    source = None if spec is None else SOURCES.get(spec.partition(":")[0])
    return source is not None and source.tokens


def load_data(
    spec: str,
    *,
    seed: int = 0,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    verify: bool | None = None,
) -> DataBundle:
    """Load the data set that ``spec`` names (see the module docstring for the specs).

    Args:
        spec: ``digits``, ``synthetic[:N]``, ``cifar10:DIR``, ``imagefolder:DIR``,
            ``idx:DIR`` (or ``mnist:DIR``, ``fashion-mnist:DIR``) or ``images:DIR``.
        seed: Seeds the digits train/test split and the synthetic generator.
        image_size: Side of the square images of the resizable specs (``cifar10``: default
            32, its own; ``imagefolder`` and ``images``: default 224); not accepted for the
            other specs, whose images have a fixed size.
        mean: Per-channel mean to normalise resizable images with (default: CIFAR-10's for
            ``cifar10``, ImageNet's for the folders); with ``std``.
        std: Per-channel standard deviation, with ``mean``.
        verify: Open every image file up front (True), only when read (False), or up
            front for folders of at most 5,000 files (None).

    Example:
        >>> bundle = load_data("digits")
        >>> bundle.input_shape, bundle.num_classes
        ((1, 8, 8), 10)
    """
    source, arg = source_of(spec)
    given = {"image_size": image_size, "mean": mean, "std": std}
    given = {key: value for key, value in given.items() if value is not None}
    if given and not source.resizable:
        key, value = next(iter(given.items()))
        resizing = [f"'{s.usage}'" for s in SOURCES.values() if s.resizable]
        resizing = f"{', '.join(resizing[:-1])} and {resizing[-1]}"
        raise ConfigError(
            f"{key} applies to {resizing} data only; got {key}={value!r} with {spec!r}. "
            "Leave it out: these images have a fixed size and normalisation."
        )
    options = DataOptions(seed=seed, image_size=image_size, mean=mean, std=std, verify=verify)
    return source.load(spec, arg, options)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int | None = 0,
    drop_last: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A DataLoader whose shuffled order is fixed by ``seed``; with ``seed=None``, drawn at
    each pass from torch's global generator (which ``prune``'s streams seed per stream, so
    that a resumed run draws what the uninterrupted one did).

    ``workers=0`` (the default) loads in this process; worker processes are seeded from the
    loader's generator, so their augmentation is reproducible too.

    Example:
        >>> loader = make_loader(load_data("digits").test, batch_size=50, shuffle=False)
        >>> next(iter(loader))[0].shape
        torch.Size([50, 1, 8, 8])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer. Got {batch_size!r} instead.")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )


def require_labels(bundle: DataBundle) -> None:
    """Raise DataError if ``bundle`` has no labels (``images:DIR``): it is for distillation."""
    if not bundle.labelled:
        raise DataError(
            f"data {bundle.name!r} has no labels, so it can only be distilled on: pass "
            "--distill (distill= in Python), or give labelled data"
        )


def check_labels(bundle: DataBundle, num_classes: int) -> None:
    """Raise DataError unless ``bundle`` has labels and a model with ``num_classes``
    outputs fits them.

    Example:
        >>> check_labels(load_data("digits"), 10)
    """
    require_labels(bundle)
    if num_classes != bundle.num_classes:
        raise DataError(
            f"the model predicts {num_classes} classes but data {bundle.name!r} has "
            f"{bundle.num_classes}; build the model with num_classes={bundle.num_classes}."
        )
    for split, dataset in (("train", bundle.train), ("test", bundle.test)):
        labels = _labels_of(dataset)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{split} labels of {bundle.name!r} must lie in [0, {num_classes}) for a model "
                f"with {num_classes} classes; found {int(labels.min())}..{int(labels.max())}. "
                "Fix the labels or the model's class count."
            )


def _labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return _labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:  # a data set from elsewhere: read every sample once
        labels = [label for _, label in dataset]
    return torch.as_tensor(labels)


def _existing_dir(arg: str, spec: str) -> Path:
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory '{path}' of {spec!r} does not exist; check the path.")
    return path


# 3 KiB per sample: a million is 3 GiB in memory; synthetic:100000000000 asked for 800 GB
# before failing in the allocator (issue 28).
_SYNTHETIC_MAX = 1_000_000


def _parse_count(spec: str, arg: str) -> int:
    if not arg.isdigit() or not _SYNTHETIC_MIN <= int(arg) <= _SYNTHETIC_MAX:
        raise DataError(
            f"the sample count N of 'synthetic:N' must be an integer from {_SYNTHETIC_MIN} to "
            f"{_SYNTHETIC_MAX:,}; got {spec!r}. Use e.g. 'synthetic:2000'."
        )
    return int(arg)


def _check_image_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ConfigError(f"image_size must be an integer >= 8. Got {size!r} instead.")
    return size


def _check_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, default: torch.Tensor
) -> torch.Tensor:
    """(mean, std) shaped (2, 3, 1, 1): the given ones, checked, or ``default``."""
    if mean is None and std is None:
        return default
    if mean is None or std is None:
        raise ConfigError(f"give mean and std together; got mean={mean!r}, std={std!r}.")
    rows = [tuple(float(v) for v in values) for values in (mean, std)]
    if any(len(row) != 3 or not all(math.isfinite(v) for v in row) for row in rows):
        raise ConfigError(
            f"mean and std must be 3 finite numbers each (RGB). Got {mean!r} and {std!r}."
        )
    if min(rows[1]) <= 0:
        raise ConfigError(f"std must be positive. Got {std!r}.")
    return torch.tensor(rows).view(2, 3, 1, 1)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) image resized to (C, size, size), bilinear, antialiased when shrinking."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]


def _normalize(image: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Per-channel ``(image - mean) / std`` with ``stats`` = (mean, std), each (3, 1, 1)."""
    return (image - stats[0]) / stats[1]


def _random_flip(image: torch.Tensor) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    return image.flip(-1) if torch.rand(()) < 0.5 else image


# ---------------------------------------------------------------------------------------------
# digits and synthetic: small sets generated or bundled in memory


def _load_digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)  # (N,1,8,8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.25, stratify=digits.target, random_state=seed
    )
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    images = (images - images[train].mean()) / images[train].std()
    return DataBundle(
        name="digits",
        train=_InMemory(images[train], labels[train]),
        test=_InMemory(images[test], labels[test]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def _load_synthetic(count: int, seed: int) -> DataBundle:
    """Smooth random class patterns, shifted by up to 3 pixels, under unit Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(10, 3, 4, 4, generator=generator)
    patterns = 2 * F.interpolate(coarse, size=16, mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (count,), generator=generator)
    shifts = torch.randint(-3, 4, (count, 2), generator=generator).tolist()
    images = torch.stack(
        [patterns[c].roll(shift, dims=(1, 2)) for c, shift in zip(labels, shifts, strict=True)]
    )
    images += torch.randn(images.shape, generator=generator)  # (N, 3, 16, 16)
    n_test = count // 5
    return DataBundle(
        name=f"synthetic:{count}",
        train=_InMemory(images[n_test:], labels[n_test:]),
        test=_InMemory(images[:n_test], labels[:n_test]),
        num_classes=10,
        input_shape=(3, 16, 16),
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def _load_cifar10(spec: str, root: Path, size: int, stats: torch.Tensor) -> DataBundle:
    if not (root / "data_batch_1").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"  # the folder the official archive unpacks to
    train = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _read_cifar_batch(root / "test_batch")
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    transform = partial(_cifar_transform, size=size, stats=stats)
    return DataBundle(
        name=spec,
        train=_InMemory(train_images, train_labels, partial(transform, augment=True)),
        test=_InMemory(test_images, test_labels, partial(transform, augment=False)),
        num_classes=10,
        input_shape=(3, size, size),
    )


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch as uint8 images (N, 3, 32, 32) and labels (N,)."""
    if not path.is_file():
        raise DataError(
            f"CIFAR-10 file '{path}' is missing; DIR must hold the python-version batches "
            "data_batch_1..5 and test_batch (from cifar-10-python.tar.gz)."
        )
    try:
        with path.open("rb") as file:
            batch = load_data_pickle(file, encoding="bytes")  # refuses anything but data
        raw, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
        data = _pixels(raw)
    except (FileFormatError, KeyError, TypeError, ValueError, OverflowError, OSError) as err:
        reason = err if isinstance(err, FileFormatError) else f"{type(err).__name__}: {err}"
        raise DataError(
            f"CIFAR-10 file '{path}' is not a readable batch ({reason}); "
            "replace it with the original from cifar-10-python.tar.gz."
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"CIFAR-10 file '{path}' must hold b'data' of shape (N, 3072) and N b'labels'; got "
            f"{data.shape} and {len(labels)} labels. Replace it with the original batch."
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"CIFAR-10 file '{path}' has labels {labels.min()}..{labels.max()} outside 0..9; "
            "replace it with the original batch."
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _pixels(raw: object) -> np.ndarray:
    """CIFAR pixel values as uint8: integers in 0..255 (a cast would wrap negatives and turn
    NaN into 0 silently; issue 28)."""
    values = np.asarray(raw)
    if values.dtype == np.uint8:
        return values
    if not np.issubdtype(values.dtype, np.integer) or (
        values.size and (values.min() < 0 or values.max() > 255)
    ):
        low, high = (values.min(), values.max()) if values.size else ("", "")
        raise ValueError(
            f"pixel values must be integers in 0..255; got {values.dtype} values {low}..{high}"
        )
    return values.astype(np.uint8)


def _cifar_transform(
    image: torch.Tensor, *, augment: bool, size: int, stats: torch.Tensor
) -> torch.Tensor:
    """uint8 (3, 32, 32) to normalised float (3, size, size); augment: random crop with
    4-pixel padding, flip (at 32x32, before the resize)."""
    image = image.float().div_(255)
    if augment:
        padded = F.pad(image, (4, 4, 4, 4))  # (3, 40, 40), zero (black) border
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = _random_flip(padded[:, top : top + 32, left : left + 32])
    return _normalize(_resize(image, size), stats)


# ---------------------------------------------------------------------------------------------
# ImageNet-style folders


def _load_imagefolder(
    spec: str, root: Path, size: int, stats: torch.Tensor, verify: bool | None
) -> DataBundle:
    train_files = _scan_split(root, "train")
    val_files = _scan_split(root, "val")
    if train_files.keys() != val_files.keys():
        only_train = sorted(train_files.keys() - val_files.keys())
        only_val = sorted(val_files.keys() - train_files.keys())
        raise DataError(
            f"class folders of '{root}/train' and '{root}/val' differ (only in train: "
            f"{only_train}, only in val: {only_val}); give both splits the same classes."
        )
    classes = sorted(train_files)
    if len(classes) < 2:  # a classifier's loss on one class is 0 whatever it keeps (issue 28)
        raise DataError(
            f"image folder '{root}' has one class ({classes[0]!r}); a classifier needs at "
            "least two class folders to learn or be pruned by its loss."
        )
    train = _ImageFolder(
        _samples(train_files, classes), partial(_train_image, size=size, stats=stats)
    )
    test = _ImageFolder(_samples(val_files, classes), partial(_eval_image, size=size, stats=stats))
    if verify or (verify is None and len(train) + len(test) <= _VERIFY_LIMIT):
        train.verify()
        test.verify()
    return DataBundle(
        name=spec, train=train, test=test, num_classes=len(classes), input_shape=(3, size, size)
    )


def _scan_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Image files of ``root/split`` by class folder name."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"image folder '{root}' has no '{split}/' split; expected the ImageNet layout "
            f"{root}/{split}/CLASS/IMAGE."
        )
    files = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }
    if not files:
        raise DataError(f"'{folder}' has no class folders; expected {folder}/CLASS/IMAGE.")
    for name, paths in files.items():
        if not paths:
            raise DataError(
                f"class folder '{folder / name}' holds no images ({', '.join(_IMAGE_SUFFIXES)}); "
                "add images or remove the folder."
            )
    return files


def _samples(files: dict[str, list[Path]], classes: list[str]) -> list[tuple[Path, int]]:
    return [(path, label) for label, name in enumerate(classes) for path in files[name]]


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)``, with any failure inside the block turned into a DataError."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image '{path}' ({err}); replace or delete the file.") from err


def _read_rgb(path: Path) -> Image.Image:
    with _opened(path) as image:
        return image.convert("RGB")


def _train_image(image: Image.Image, *, size: int, stats: torch.Tensor) -> torch.Tensor:
    """Random resized crop (scale 0.08..1, aspect 3/4..4/3) to ``size``, then a random flip."""
    box = _random_box(image.width, image.height)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return _normalize(_random_flip(_to_tensor(image)), stats)


def _eval_image(image: Image.Image, *, size: int, stats: torch.Tensor) -> torch.Tensor:
    """Resize the short side to ``size * 256 / 224`` and crop the ``size`` square centre."""
    side = min(image.width, image.height) * 224 / 256  # the centre crop, in source pixels
    left, top = (image.width - side) / 2, (image.height - side) / 2
    image = image.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )
    return _normalize(_to_tensor(image), stats)


def _random_box(
    width: int, height: int, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """The crop box of torchvision's RandomResizedCrop: 10 tries, then a centre crop; drawn
    from ``generator`` (default: torch's global one)."""
    area = width * height
    log_ratios = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u_area, u_ratio, u_left, u_top = torch.rand(4, generator=generator).tolist()
        target = area * (0.08 + 0.92 * u_area)
        ratio = math.exp(log_ratios[0] + (log_ratios[1] - log_ratios[0]) * u_ratio)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(u_left * (width - w + 1))
            top = int(u_top * (height - h + 1))
            return left, top, left + w, top + h
    w, h = width, height  # fall back to the whole image, clipped to the aspect range
    if width / height < 3 / 4:
        h = round(width * 4 / 3)
    elif width / height > 4 / 3:
        w = round(height * 4 / 3)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image to float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def _load_idx(spec: str, root: Path) -> DataBundle:
    """The official train (``train-*``) and test (``t10k-*``) splits, normalised with the
    training images' own mean and standard deviation."""
    splits = {}
    for split in ("train", "t10k"):
        images = _read_idx_file(root, split, "images", 3)
        labels = _read_idx_file(root, split, "labels", 1)
        if len(images) != len(labels):
            raise DataError(
                f"IDX files of '{root}' hold {len(images)} {split} images but {len(labels)} "
                "labels; replace them with the original files."
            )
        splits[split] = (
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        )
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["t10k"]
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"IDX images of '{root}' differ in size between train {tuple(train_images.shape[2:])} "
            f"and t10k {tuple(test_images.shape[2:])}; replace them with the original files."
        )
    # the mean and standard deviation of the pixels in [0, 1], from their histogram (exact,
    # without a float copy of the images)
    counts = torch.bincount(train_images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / (counts.sum() - 1)).sqrt()
    stats = torch.tensor([mean, std if std > 0 else 1.0], dtype=torch.float32).view(2, 1, 1, 1)
    transform = partial(_idx_transform, stats=stats)
    return DataBundle(
        name=spec,
        train=_InMemory(train_images, train_labels, transform),
        test=_InMemory(test_images, test_labels, transform),
        num_classes=int(max(train_labels.max(), test_labels.max())) + 1,
        input_shape=tuple(train_images.shape[1:]),
    )


def _read_idx_file(root: Path, split: str, kind: str, dims: int) -> np.ndarray:
    """``root/{split}-{kind}-idx{dims}-ubyte``, also with ``.`` before ``idx`` or ``.gz``."""
    names = [f"{split}-{kind}{sep}idx{dims}-ubyte" for sep in "-."]
    for name in names:
        for path in (root / name, root / f"{name}.gz"):
            if path.is_file():
                try:
                    return read_idx(path, dims=dims)
                except FileFormatError as err:
                    raise DataError(str(err)) from err
    raise DataError(
        f"IDX file '{root / names[0]}[.gz]' is missing; DIR must hold train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped "
        "or not), as MNIST and Fashion-MNIST ship."
    )


def _idx_transform(image: torch.Tensor, *, stats: torch.Tensor) -> torch.Tensor:
    """uint8 (1, H, W) to float, normalised with the training set's (mean, std)."""
    return _normalize(image.float().div_(255), stats)


# ---------------------------------------------------------------------------------------------
# unlabelled photos: random square crops, for distillation


class _Photos(Dataset):
    """``crops`` square crops of each photo, with RandomResizedCrop's boxes; a sample is the
    image alone (no label).

    Training crops (``seed=None``) draw their boxes and flips from torch's global generator,
    as the other augmentations do; held-out crops (a ``seed``) draw each box from a generator
    seeded by ``(seed, index)``, so the test set is the same every time.
    """

    def __init__(
        self, paths: list[Path], crops: int, *, size: int, stats: torch.Tensor, seed: int | None
    ) -> None:
        self.paths, self.crops, self.size, self.stats, self.seed = paths, crops, size, stats, seed

    def __len__(self) -> int:
        return len(self.paths) * self.crops

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = _read_crop(self.paths[index // self.crops], self.size, generator)
        if self.seed is None:
            image = _random_flip(image)
        return _normalize(image, self.stats)

    def verify(self) -> None:
        """Open every file once (headers only); raises DataError naming a bad file."""
        for path in self.paths:
            with _opened(path):
                pass


def _load_photos(
    spec: str, root: Path, size: int, stats: torch.Tensor, verify: bool | None
) -> DataBundle:
    """A fifth of the photos (at least one), drawn with a fixed seed, is held out; each split
    gives enough crops per photo for :data:`_PHOTO_SAMPLES` samples."""
    paths = _image_files(root)
    if len(paths) < 2:
        raise DataError(
            f"image folder '{root}' holds {len(paths)} image(s) ({', '.join(_IMAGE_SUFFIXES)}); "
            "give at least two (a fifth, at least one, is held out for testing)."
        )
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    split = max(1, len(paths) // 5)
    test_paths = [paths[i] for i in sorted(order[:split].tolist())]
    train_paths = [paths[i] for i in sorted(order[split:].tolist())]
    train_samples, test_samples = _PHOTO_SAMPLES
    train = _Photos(
        train_paths, -(-train_samples // len(train_paths)), size=size, stats=stats, seed=None
    )
    test = _Photos(
        test_paths, -(-test_samples // len(test_paths)), size=size, stats=stats, seed=_SPLIT_SEED
    )
    if verify or (verify is None and len(paths) <= _VERIFY_LIMIT):
        train.verify()
        test.verify()
    return DataBundle(
        name=spec,
        train=train,
        test=test,
        num_classes=0,
        input_shape=(3, size, size),
        labelled=False,
    )


def _image_files(root: Path) -> list[Path]:
    """Every image file under ``root``, at any depth (symbolic links to folders not followed),
    sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in _IMAGE_SUFFIXES]
    return sorted(found)


def _read_crop(path: Path, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A RandomResizedCrop box of the image at ``path``, resized to ``size``, float (3, S, S).

    A JPEG is decoded at the smallest power-of-two reduction that keeps the box at least
    ``size`` pixels on each side (Pillow's ``draft``): the same crop, several times faster on
    large photos."""
    with _opened(path) as image:
        width, height = image.size
        left, top, right, bottom = _random_box(width, height, generator)
        if image.format == "JPEG":
            factor = max(size / (right - left), size / (bottom - top))
            image.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
            scale = image.size[0] / width
            left, top, right, bottom = (v * scale for v in (left, top, right, bottom))
        image = image.convert("RGB").resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, right, bottom)
        )
    return _to_tensor(image)


# ---------------------------------------------------------------------------------------------
# the sources, one class per spec prefix


class _Digits(DataSource):
    prefix = usage = "digits"
    takes_arg = False

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        return _load_digits(options.seed)


class _Synthetic(DataSource):
    prefix, usage = "synthetic", "synthetic[:N]"
    takes_arg = None

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        count = _SYNTHETIC_DEFAULT if arg is None else _parse_count(spec, arg)
        return _load_synthetic(count, options.seed)


class _Cifar10(DataSource):
    prefix, usage = "cifar10", "cifar10:DIR"
    resizable = True

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        size = 32 if options.image_size is None else _check_image_size(options.image_size)
        stats = _check_stats(options.mean, options.std, _CIFAR_STATS)
        return _load_cifar10(spec, _existing_dir(arg, spec), size, stats)


def _photo_options(options: DataOptions) -> tuple[int, torch.Tensor]:
    """The side and normalisation of a folder of photos: 224 and ImageNet's unless given."""
    size = 224 if options.image_size is None else _check_image_size(options.image_size)
    return size, _check_stats(options.mean, options.std, _IMAGENET_STATS)


class _ClassFolders(DataSource):
    prefix, usage = "imagefolder", "imagefolder:DIR"
    resizable = True

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        size, stats = _photo_options(options)
        return _load_imagefolder(spec, _existing_dir(arg, spec), size, stats, options.verify)


class _UnlabelledImages(DataSource):
    """``images:DIR``: the image files under DIR at any depth, without labels; each split
    yields random square crops (see :func:`_load_photos`)."""

    prefix, usage = "images", "images:DIR"
    resizable = True

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        size, stats = _photo_options(options)
        return _load_photos(spec, _existing_dir(arg, spec), size, stats, options.verify)


class _Idx(DataSource):
    prefix, usage = "idx", "idx:DIR"

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        return _load_idx(spec, _existing_dir(arg, spec))


class _Mnist(_Idx):
    prefix, usage = "mnist", "mnist:DIR"


class _FashionMnist(_Idx):
    prefix, usage = "fashion-mnist", "fashion-mnist:DIR"


class _Text(DataSource):
    """``text:FILE``: tokenised by a model's tokenizer, so loaded by
    :func:`gfsprune.workflow.text.load_text`, which knows the model, not here."""

    prefix, usage = "text", "text:FILE"
    tokens = True

    def load(self, spec: str, arg: str | None, options: DataOptions) -> DataBundle:
        raise DataError(
            f"{spec!r} is text, tokenised by a model's tokenizer: give it to prune or eval with "
            "--model hf:DIR (gfsprune.workflow.text.load_text in Python)."
        )


#: The data sources by prefix; a new format is one :class:`DataSource` added here.
SOURCES: dict[str, DataSource] = {
    source.prefix: source
    for source in (
        _Digits(),
        _Synthetic(),
        _Cifar10(),
        _ClassFolders(),
        _Idx(),
        _Mnist(),
        _FashionMnist(),
        _UnlabelledImages(),
        _Text(),
    )
}

#: The forms of every image data spec (``text:FILE`` is read by the text module).
SPECS = tuple(source.usage for source in SOURCES.values() if not source.tokens)
