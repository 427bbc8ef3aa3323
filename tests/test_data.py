"""The IDX reader on the real Fashion-MNIST files, and the folder and synthetic datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    FASHION_MNIST_DIR,
    DatasetError,
    batches,
    load_dataset,
    load_fashion_mnist,
    load_folder,
    read_idx,
    synthetic,
)

from .system import needs

needs_fashion = needs("dataset-fashion-mnist")


@needs_fashion
def test_reads_the_real_fashion_mnist() -> None:
    data = load_fashion_mnist(val_size=5000, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert data.image_shape == (1, 28, 28)
    assert data.class_names[9] == "ankle boot"
    assert data.test.labels.bincount().tolist() == [1000] * 10
    # Known facts about the official files: the first test image is an ankle boot (label 9)
    # and the mean pixel of the training set is 72.94 / 255.
    assert int(data.test.labels[0]) == 9
    full = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    assert full.shape == (60000, 28, 28)
    assert float(full.mean()) == pytest.approx(72.94, abs=0.01)


def _write_idx(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def test_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    out = read_idx(_write_idx(tmp_path / "x.gz", header + arr.tobytes()))
    assert np.array_equal(out, arr)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"PK\x03\x04junk", "bad magic number"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4, "element type 0x0d is not supported"),
        (bytes([0, 0, 8, 3, 0, 0]), "header truncated"),
        (
            bytes([0, 0, 8, 1, 0, 0, 0, 10]) + b"\0" * 7,
            "header promises 10 values of shape \\(10,\\), file holds 7",
        ),
    ],
)
def test_corrupt_idx_is_refused(tmp_path: Path, payload: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_idx(_write_idx(tmp_path / "bad.gz", payload))


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetError, match="unreadable"):
        read_idx(tmp_path / "bad.gz")


def test_missing_fashion_mnist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def make_folder(root: Path, size: int = 20, mixed: bool = False) -> Path:
    """Two classes of RGB images, saved alternately as PNG and JPEG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            side = size + (i % 2) * 4 if mixed else size
            arr = np.full((side, side, 3), 40 + 150 * c, dtype=np.uint8)
            arr[: side // 2] = rng.integers(0, 255, (side // 2, side, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / name / f"{i}.{ext}")
    return root


def test_folder_dataset_reads_mixed_png_and_jpeg(tmp_path: Path) -> None:
    data = load_folder(make_folder(tmp_path / "imgs"))
    assert data.class_names == ("cats", "dogs")
    assert data.image_shape == (3, 20, 20)
    assert len(data.train) + len(data.val) + len(data.test) == 12
    all_labels = np.concatenate([s.labels.numpy() for s in (data.train, data.val, data.test)])
    assert sorted(all_labels.tolist()) == [0] * 6 + [1] * 6
    # the dogs are brighter in the bottom half, where the images are flat colour
    dogs = data.train.images[data.train.labels == 1]
    assert abs(float(dogs[:, :, 15:].float().mean()) - 190) < 3


def test_folder_mixed_sizes_need_an_image_shape(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", mixed=True)
    with pytest.raises(DatasetError, match=r"differ in size or mode.*pass --image-shape"):
        load_folder(root)
    data = load_folder(root, image_shape=(1, 16, 16))
    assert data.image_shape == (1, 16, 16)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a readable directory"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="found 0 PNG/JPEG images"):
        load_folder(tmp_path / "empty")
    root = make_folder(tmp_path / "imgs")
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"broken\.png: not a readable image"):
        load_folder(root)


def test_folder_alpha_is_composited_on_white(tmp_path: Path) -> None:
    root = tmp_path / "alpha"
    root.mkdir()
    for i in range(3):
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / f"{i}.png")
    data = load_folder(root)
    assert data.image_shape == (3, 8, 8)
    assert int(data.train.images.min()) == 255


def test_synthetic_and_batches() -> None:
    data = synthetic((3, 32, 32), n=100, seed=1)
    assert data.image_shape == (3, 32, 32)
    again = synthetic((3, 32, 32), n=100, seed=1)
    assert (data.train.images == again.train.images).all()
    got = [x for x, _ in batches(data.train, 32, drop_last=True)]
    assert [b.shape[0] for b in got] == [32, 32]
    assert got[0].dtype.is_floating_point and float(got[0].max()) <= 1.0


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", None)
