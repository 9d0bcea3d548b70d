from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from gfsprune.errors import ConfigError, DataError
from gfsprune.workflow.data import DataBundle, check_labels, load_data, make_loader

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar_batch(path: Path, count: int, *, seed: int, labels: list[int] | None = None):
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"labels": labels if labels is not None else [i % 10 for i in range(count)],
    }
    path.write_bytes(pickle.dumps(batch))


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    for seed, name in enumerate(CIFAR_FILES):
        write_cifar_batch(tmp_path / name, 4 if name != "test_batch" else 3, seed=seed)
    return tmp_path


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    for seed, (split, cls, name, size) in enumerate(
        [
            ("train", "cat", "a.png", (20, 12)),
            ("train", "cat", "b.jpg", (12, 20)),
            ("train", "dog", "c.png", (16, 16)),
            ("val", "cat", "d.png", (24, 18)),
            ("val", "dog", "e.jpg", (18, 24)),
        ]
    ):
        write_image(tmp_path / split / cls / name, size, seed)
    return tmp_path


def test_digits_shapes_and_normalisation() -> None:
    bundle = load_data("digits")
    image, label = bundle.train[0]
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("digits", 10, (1, 8, 8))
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    assert (len(bundle.train), len(bundle.test)) == (1347, 450)
    assert abs(bundle.train.images.mean().item()) < 1e-4
    assert bundle.train.images.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_split_is_stratified_and_deterministic() -> None:
    first, again, other = load_data("digits"), load_data("digits"), load_data("digits", seed=1)
    torch.testing.assert_close(first.test.images, again.test.images)
    assert not torch.equal(first.test.labels, other.test.labels)
    counts = torch.bincount(first.test.labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # 25% of 174..183 per class


def test_synthetic_is_seeded_and_sized() -> None:
    bundle = load_data("synthetic:100", seed=3)
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (80, 20, (3, 16, 16))
    assert bundle.train[0][0].shape == (3, 16, 16)
    torch.testing.assert_close(bundle.train.images, load_data("synthetic:100", seed=3).train.images)
    assert not torch.equal(bundle.train.images, load_data("synthetic:100", seed=4).train.images)
    assert len(load_data("synthetic").train) == 1600


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:5", "synthetic:"])
def test_synthetic_bad_count(spec: str) -> None:
    with pytest.raises(
        DataError, match=r"'synthetic:N' must be an integer from 20 to 1,000,000.*synthetic:2000"
    ):
        load_data(spec)


@pytest.mark.parametrize("spec", ["mnist", "digits:x", "cifar10", "imagefolder:"])
def test_unknown_spec_lists_the_valid_ones(spec: str) -> None:
    with pytest.raises(DataError, match=r"unknown data spec.*digits, synthetic\[:N\], cifar10:DIR"):
        load_data(spec)


@pytest.mark.parametrize(
    ("option", "value"), [("image_size", 32), ("mean", (0.5, 0.5, 0.5)), ("std", (1, 1, 1))]
)
def test_size_and_normalisation_only_for_image_data(option: str, value: object) -> None:
    match = (
        rf"^{option} applies to 'cifar10:DIR', 'imagefolder:DIR' and 'images:DIR' data only; "
        rf"got {option}="
    )
    with pytest.raises(ConfigError, match=match):
        load_data("digits", **{option: value})


def test_cifar10_resizes_and_normalises_to_the_model(cifar_dir: Path) -> None:
    own = load_data(f"cifar10:{cifar_dir}", mean=(0, 0, 0), std=(1, 1, 1))
    sized = load_data(f"cifar10:{cifar_dir}", image_size=16, mean=(0.5, 0.5, 0.5), std=(2, 2, 2))
    assert sized.input_shape == (3, 16, 16)
    raw, image = own.test[0][0], sized.test[0][0]  # raw: the [0, 1] pixels
    assert image.shape == (3, 16, 16)
    expected = torch.nn.functional.interpolate(raw[None], size=16, mode="bilinear", antialias=True)
    torch.testing.assert_close(image, (expected[0] - 0.5) / 2)


def test_imagefolder_normalises_with_the_given_statistics(folder_dir: Path) -> None:
    spec = f"imagefolder:{folder_dir}"
    default = load_data(spec, image_size=8).test[0][0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, the default
    torch.testing.assert_close(
        load_data(spec, image_size=8, mean=mean, std=std).test[0][0], default
    )
    flat = load_data(spec, image_size=8, mean=(0, 0, 0), std=(1, 1, 1)).test[0][0]
    torch.testing.assert_close(
        default, (flat - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    )


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ((0.5, 0.5, 0.5), None, "give mean and std together"),
        ((0.5, 0.5), (1, 1), "mean and std must be 3 finite numbers each"),
        ((0.5, 0.5, 0.5), (1, 0, 1), "std must be positive"),
    ],
)
def test_bad_statistics_are_refused(folder_dir: Path, mean, std, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_data(f"imagefolder:{folder_dir}", mean=mean, std=std)


def test_cifar10_loads_with_augmentation(cifar_dir: Path) -> None:
    bundle = load_data(f"cifar10:{cifar_dir}")
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (20, 3, 10)
    assert bundle.input_shape == (3, 32, 32)
    image, label = bundle.test[1]
    assert image.shape == (3, 32, 32) and label == 1
    torch.testing.assert_close(image, bundle.test[1][0])  # test images are not augmented
    torch.manual_seed(0)
    crops = torch.stack([bundle.train[0][0] for _ in range(8)])
    assert crops.shape == (8, 3, 32, 32)
    assert len({tuple(c.flatten()[:50].tolist()) for c in crops}) > 1  # random crops differ
    torch.manual_seed(0)
    torch.testing.assert_close(crops, torch.stack([bundle.train[0][0] for _ in range(8)]))


def test_cifar10_accepts_the_archive_folder(cifar_dir: Path) -> None:
    inner = cifar_dir / "cifar-10-batches-py"
    inner.mkdir()
    for name in CIFAR_FILES:
        (cifar_dir / name).rename(inner / name)
    assert len(load_data(f"cifar10:{cifar_dir}").test) == 3


def test_cifar10_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data directory '.*nowhere' of 'cifar10:.*does not exist"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")


def test_cifar10_missing_test_batch(cifar_dir: Path) -> None:
    (cifar_dir / "test_batch").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10 file '.*test_batch' is missing.*data_batch_1"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar10_corrupt_batch(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"'.*data_batch_3' is not a readable batch.*replace it"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar10_truncated_batch(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_1").write_bytes(b"0123456789")  # ten bytes
    with pytest.raises(DataError, match=r"'.*data_batch_1' is not a readable batch \(not a data"):
        load_data(f"cifar10:{cifar_dir}")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_batch_that_would_run_code_is_refused_by_name(cifar_dir: Path) -> None:
    marker = cifar_dir.parent / "payload-ran"
    batch = {b"data": _Payload(marker), b"labels": [0]}
    (cifar_dir / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(
        DataError, match=r"data_batch_1' is not a readable batch.*names posix.system"
    ):
        load_data(f"cifar10:{cifar_dir}")
    assert not marker.exists()


def test_cifar10_batch_without_labels(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072))}))
    with pytest.raises(DataError, match=r"data_batch_2' is not a readable batch \(KeyError"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar10_wrong_shape(cifar_dir: Path) -> None:
    batch = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (cifar_dir / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"must hold b'data' of shape \(N, 3072\).*\(2, 100\)"):
        load_data(f"cifar10:{cifar_dir}")


def test_cifar10_labels_out_of_range(cifar_dir: Path) -> None:
    write_cifar_batch(cifar_dir / "data_batch_5", 2, seed=0, labels=[3, 12])
    with pytest.raises(DataError, match=r"data_batch_5' has labels 3..12 outside 0..9"):
        load_data(f"cifar10:{cifar_dir}")


def test_imagefolder_loads_and_transforms(folder_dir: Path) -> None:
    bundle = load_data(f"imagefolder:{folder_dir}", image_size=8)
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (3, 2, 2)
    assert bundle.input_shape == (3, 8, 8)
    assert bundle.train.labels.tolist() == [0, 0, 1]  # classes sorted: cat, dog
    image, label = bundle.test[1]
    assert image.shape == (3, 8, 8) and label == 1
    torch.testing.assert_close(image, bundle.test[1][0])
    torch.manual_seed(0)
    crops = torch.stack([bundle.train[1][0] for _ in range(6)])
    assert crops.shape == (6, 3, 8, 8)
    torch.manual_seed(0)
    torch.testing.assert_close(crops, torch.stack([bundle.train[1][0] for _ in range(6)]))
    assert not torch.equal(crops[0], crops[1])


def test_imagefolder_eval_crop_is_the_centre(tmp_path: Path) -> None:
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)  # wide image: a white centre square
    pixels[8:56, 40:88] = 255
    for split in ("train", "val"):
        for cls in ("a", "b"):  # two classes: one alone is refused
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / split / cls / "x.png")
    image, _ = load_data(f"imagefolder:{tmp_path}", image_size=16).test[0]
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(image[:, 4:12, 4:12], white.view(3, 1, 1).expand(3, 8, 8))


def test_imagefolder_missing_split(folder_dir: Path) -> None:
    for path in sorted((folder_dir / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder_dir / "val").rmdir()
    with pytest.raises(DataError, match=r"image folder '.*' has no 'val/' split.*ImageNet layout"):
        load_data(f"imagefolder:{folder_dir}")


def test_imagefolder_empty_class(folder_dir: Path) -> None:
    (folder_dir / "train" / "cow").mkdir()
    (folder_dir / "train" / "cow" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=r"class folder '.*train/cow' holds no images"):
        load_data(f"imagefolder:{folder_dir}")


def test_imagefolder_classes_differ(folder_dir: Path) -> None:
    write_image(folder_dir / "val" / "cow" / "f.png", (8, 8), seed=9)
    with pytest.raises(DataError, match=r"differ \(only in train: \[\], only in val: \['cow'\]\)"):
        load_data(f"imagefolder:{folder_dir}")


def test_imagefolder_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"'.*train' has no class folders"):
        load_data(f"imagefolder:{tmp_path}")


def test_imagefolder_corrupt_image_up_front(folder_dir: Path) -> None:
    (folder_dir / "train" / "dog" / "c.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image '.*dog/c.png'.*replace or delete"):
        load_data(f"imagefolder:{folder_dir}")


def test_imagefolder_corrupt_image_when_read(folder_dir: Path) -> None:
    good = (folder_dir / "val" / "cat" / "d.png").read_bytes()
    (folder_dir / "val" / "cat" / "d.png").write_bytes(good[: len(good) // 2])  # truncated
    bundle = load_data(f"imagefolder:{folder_dir}", verify=False)
    bundle.test[1]  # the other image is fine
    with pytest.raises(DataError, match=r"cannot read image '.*cat/d.png'"):
        bundle.test[0]


def test_check_labels() -> None:
    bundle = load_data("synthetic:40")
    check_labels(bundle, 10)
    with pytest.raises(DataError, match=r"model predicts 7 classes but data 'synthetic:40' has 10"):
        check_labels(bundle, 7)
    bad = DataBundle("bad", Subset(bundle.train, [0, 1]), [(torch.zeros(1), 10)], 10, (1, 1, 1))
    match = r"test labels of 'bad' must lie in \[0, 10\).*found 10..10"
    with pytest.raises(DataError, match=match):
        check_labels(bad, 10)


def test_make_loader_is_reproducible() -> None:
    dataset = load_data("synthetic:40").train

    def order(seed: int, workers: int = 0) -> list[int]:
        loader = make_loader(dataset, batch_size=8, shuffle=True, seed=seed, workers=workers)
        return torch.cat([labels for _, labels in loader]).tolist()

    assert order(1) == order(1) == order(1, workers=1)
    assert order(1) != order(2)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer. Got 0"):
        make_loader(dataset, batch_size=0, shuffle=False)


def write_idx_dir(root: Path, *, zipped: bool = True, test_count: int = 4) -> Path:
    from tests.io.test_idx import write_idx

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("t10k", test_count)):
        suffix = "-ubyte.gz" if zipped else "-ubyte"
        images = rng.integers(0, 256, (count, 5, 7), dtype=np.uint8)
        write_idx(root / f"{split}-images-idx3{suffix}", images, zipped=zipped)
        write_idx(root / f"{split}-labels-idx1{suffix}", np.arange(count) % 3, zipped=zipped)
    return root


@pytest.mark.parametrize("prefix", ["idx", "mnist", "fashion-mnist"])
def test_idx_data_keeps_the_official_split(tmp_path, prefix) -> None:
    bundle = load_data(f"{prefix}:{write_idx_dir(tmp_path)}")
    assert (len(bundle.train), len(bundle.test)) == (6, 4)
    assert (bundle.num_classes, bundle.input_shape, bundle.labelled) == (3, (1, 5, 7), True)
    train = torch.stack([bundle.train[i][0] for i in range(6)])
    torch.testing.assert_close(train.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert [bundle.test[i][1] for i in range(4)] == [0, 1, 2, 0]


def test_idx_files_must_all_be_there_and_agree(tmp_path) -> None:
    root = write_idx_dir(tmp_path, zipped=False)
    assert len(load_data(f"idx:{root}").test) == 4  # plain files read too
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]' is missing"):
        load_data(f"idx:{root}")
    from tests.io.test_idx import write_idx

    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(3))
    with pytest.raises(DataError, match=r"hold 4 t10k images but 3 labels"):
        load_data(f"idx:{root}")
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x09\x01")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte': type code is 0x09"):
        load_data(f"idx:{root}")


def test_unlabelled_images_hold_out_whole_files(tmp_path) -> None:
    for i in range(12):
        write_image(
            tmp_path / f"{'a/b' if i % 2 else 'c'}/{i}.{'jpg' if i % 3 else 'png'}", (40 + i, 30), i
        )
    bundle = load_data(f"images:{tmp_path}", image_size=16)
    assert (bundle.labelled, bundle.num_classes, bundle.input_shape) == (False, 0, (3, 16, 16))
    train, test = set(bundle.train.paths), set(bundle.test.paths)
    assert len(test) == 2 and len(train) == 10 and not train & test
    assert len(bundle.train) >= 1024 and len(bundle.test) >= 256
    first = bundle.test[5]
    assert first.shape == (3, 16, 16)
    torch.testing.assert_close(load_data(f"images:{tmp_path}", image_size=16).test[5], first)
    assert not torch.equal(bundle.test[6], first)  # another crop
    with pytest.raises(DataError, match=r"has no labels, so it can only be distilled on"):
        check_labels(bundle, 10)


def test_unlabelled_images_need_two_files(tmp_path) -> None:
    write_image(tmp_path / "only.png", (20, 20), 0)
    with pytest.raises(DataError, match=r"holds 1 image\(s\) .*give at least two"):
        load_data(f"images:{tmp_path}")


def test_a_jpeg_crop_decoded_reduced_matches_the_full_decode(tmp_path) -> None:
    from gfsprune.workflow.data import _random_box, _read_crop, _to_tensor

    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).resize((800, 600)).save(tmp_path / "big.jpg", quality=95)
    crop = _read_crop(tmp_path / "big.jpg", 32, torch.Generator().manual_seed(1))
    box = _random_box(800, 600, torch.Generator().manual_seed(1))
    with Image.open(tmp_path / "big.jpg") as image:
        full = _to_tensor(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=box))
    assert crop.shape == (3, 32, 32)
    assert (crop - full).abs().mean() < 0.05


class _Strided:
    """Pickles as ``numpy.ndarray((2000000, 3072), uint8, one byte, 0, (0, 0))``: a view of
    one byte as large as six gigabytes, which a copy would allocate (issue 28)."""

    def __reduce__(self):
        return np.ndarray, ((2_000_000, 3072), np.dtype("uint8"), b"x", 0, (0, 0))


def test_cifar10_batch_posing_as_a_huge_array_is_refused(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_2").write_bytes(
        pickle.dumps({b"data": _Strided(), b"labels": [0] * 2_000_000})
    )
    with pytest.raises(DataError, match=r"data_batch_2' is not a readable batch.*is a view"):
        load_data(f"cifar10:{cifar_dir}")


@pytest.mark.parametrize(
    ("values", "shown"), [(np.nan, "float64 values nan"), (-1.0, "float64 values -1.0")]
)
def test_cifar10_pixels_that_are_not_bytes_are_refused(cifar_dir: Path, values, shown) -> None:
    data = np.full((4, 3072), 7.0)
    data[0, 0] = values
    (cifar_dir / "data_batch_4").write_bytes(pickle.dumps({b"data": data, b"labels": [0] * 4}))
    with pytest.raises(DataError, match=f"pixel values must be integers in 0..255; got {shown}"):
        load_data(f"cifar10:{cifar_dir}")


def test_an_image_folder_of_one_class_is_refused(folder_dir: Path) -> None:
    for split in ("train", "val"):
        shutil.rmtree(folder_dir / split / "dog")
    with pytest.raises(DataError, match=r"has one class \('cat'\); a classifier needs at least"):
        load_data(f"imagefolder:{folder_dir}")
