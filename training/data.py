"""Datasets for the trainer: Fashion-MNIST IDX files, a folder of images, or synthetic shapes.

Every dataset is held in memory as uint8 images [N, C, H, W] and int64 labels [N]; the
trainer turns batches into floats in [0, 1]. Fashion-MNIST is 70,000 images of 784 bytes,
so memory is never the limit here, and in-memory batching beats a DataLoader on 2 cores.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.imaging import to_mode

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_DTYPES = {0x08: np.uint8}


class DatasetError(ValueError):
    """A dataset could not be read; the message says what to fix."""


@dataclasses.dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclasses.dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not, into a numpy array.

    Layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the number of
    dimensions, one big-endian uint32 per dimension, then the data.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in IDX_DTYPES:
        raise DatasetError(f"{path}: IDX element type 0x{dtype:02x} is not supported")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: IDX header truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header promises {expected} values of shape {dims}, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=IDX_DTYPES[dtype], offset=header).reshape(dims)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DatasetError(
        f"Fashion-MNIST not found in {root} (looked for {stem}[.gz]); "
        "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"
    )


def load_fashion_mnist_split(root: Path, split: str) -> Split:
    """Read the official 'train' (60,000) or 't10k' (10,000) split."""
    images = read_idx(_idx_file(root, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{root}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        raise DatasetError(f"{root}: {split} labels go up to {labels.max()}, expected 0..9")
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def carve_validation(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Split ``val_size`` images off ``train`` with a fixed permutation."""
    if not 0 < val_size < len(train):
        raise DatasetError(f"--val-size must be between 1 and {len(train) - 1}, got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return (
        Split(train.images[train_idx], train.labels[train_idx]),
        Split(train.images[val_idx], train.labels[val_idx]),
    )


def load_fashion_mnist(
    root: Path = FASHION_MNIST_DIR, val_size: int = 5000, seed: int = 0
) -> Dataset:
    train, val = carve_validation(load_fashion_mnist_split(root, "train"), val_size, seed)
    test = load_fashion_mnist_split(root, "t10k")
    return Dataset("fashion-mnist", train, val, test, FASHION_CLASSES)


def _image_files(root: Path) -> list[tuple[Path, str]]:
    """(file, class name) for every image; images directly in root get class ''."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            rel = path.relative_to(root)
            found.append((path, rel.parts[0] if len(rel.parts) > 1 else ""))
    return found


def load_folder(
    root: Path,
    image_shape: tuple[int, int, int] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Read every PNG/JPEG under ``root``; first-level sub-folders become class labels.

    With ``image_shape`` every image is converted to its mode (C=1: 8-bit greyscale "L",
    C=3: "RGB", alpha composited on white) and resized with Lanczos antialiasing. Without
    it, the shape is read off the images, which must then all share one size and mode.
    """
    if not root.is_dir():
        raise DatasetError(f"folder dataset {root}: not a readable directory")
    files = _image_files(root)
    if len(files) < 3:
        raise DatasetError(
            f"folder dataset {root}: found {len(files)} PNG/JPEG images, need at least 3"
        )
    opened = []
    for path, label in files:
        try:
            with Image.open(path) as img:
                img.load()
                opened.append((path, label, img.copy()))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if image_shape is None:
        image_shape = _common_shape(root, opened)
    c, h, w = image_shape
    arrays = [_to_array(img, c, (w, h)) for _, _, img in opened]
    names = tuple(sorted({label for _, label, _ in opened}))
    labels = torch.tensor([names.index(label) for _, label, _ in opened])
    images = torch.from_numpy(np.stack(arrays))  # [N, C, H, W]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(images) * val_fraction))
    n_test = max(1, round(len(images) * test_fraction))
    parts = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    test, val, train = (Split(images[p], labels[p]) for p in parts)
    class_names = names if len(names) > 1 else ("image",)
    return Dataset(f"folder:{root}", train, val, test, class_names)


def _common_shape(root: Path, opened: list[tuple[Path, str, Image.Image]]) -> tuple[int, int, int]:
    first_path, _, first = opened[0]
    for path, _, img in opened[1:]:
        if img.size != first.size or _channels(img) != _channels(first):
            raise DatasetError(
                f"folder dataset {root}: images differ in size or mode "
                f"({first_path.name}: {first.size[0]}x{first.size[1]} {first.mode}, "
                f"{path.name}: {img.size[0]}x{img.size[1]} {img.mode}); "
                "pass --image-shape C,H,W to convert them all"
            )
    w, h = first.size
    if w != h:
        raise DatasetError(f"folder dataset {root}: images are {w}x{h}; pass --image-shape C,H,W")
    return (_channels(first), h, w)


def _channels(img: Image.Image) -> int:
    return 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def _to_array(img: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    img = to_mode(img, channels)
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # [C, H, W]


def synthetic(
    image_shape: tuple[int, int, int], n: int = 512, seed: int = 0, classes: int = 4
) -> Dataset:
    """Random filled rectangles and discs, one shape kind per class; for smoke runs and CI."""
    c, h, w = image_shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.randint(classes, (n,), generator=g)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([h, w]) * 0.6 + torch.tensor([h, w]) * 0.2
    radius = (torch.rand(n, generator=g) * 0.25 + 0.1) * min(h, w)
    colour = torch.rand(n, c, generator=g) * 0.7 + 0.3
    dy = (yy[None] - centre[:, 0, None, None]).abs()
    dx = (xx[None] - centre[:, 1, None, None]).abs()
    r = radius[:, None, None]
    disc = dy**2 + dx**2 <= r**2
    square = (dy <= r) & (dx <= r)
    bar_h = (dy <= r / 3) & (dx <= r)
    bar_v = (dx <= r / 3) & (dy <= r)
    masks = torch.stack([disc, square, bar_h, bar_v])[labels % 4, torch.arange(n)]  # [n, H, W]
    images = (masks[:, None].float() * colour[:, :, None, None] * 255).to(torch.uint8)
    cut1, cut2 = int(n * 0.8), int(n * 0.9)
    parts = [Split(images[a:b], labels[a:b]) for a, b in ((0, cut1), (cut1, cut2), (cut2, n))]
    return Dataset("synthetic", *parts, tuple(f"shape-{i}" for i in range(classes)))


def load_dataset(
    spec: str,
    image_shape: tuple[int, int, int] | None,
    data_dir: Path = FASHION_MNIST_DIR,
    val_size: int = 5000,
    seed: int = 0,
) -> Dataset:
    """Resolve a --dataset value: 'fashion-mnist', 'folder:PATH' or 'synthetic'."""
    if spec == "fashion-mnist":
        if image_shape not in (None, (1, 28, 28)):
            raise DatasetError(
                f"fashion-mnist images are 1x28x28; --image-shape {image_shape} does not fit"
            )
        return load_fashion_mnist(data_dir, val_size, seed)
    if spec.startswith("folder:"):
        return load_folder(Path(spec.removeprefix("folder:")).expanduser(), image_shape, seed=seed)
    if spec == "synthetic":
        return synthetic(image_shape or (1, 28, 28), seed=seed)
    raise DatasetError(f"unknown dataset {spec!r}; use fashion-mnist, folder:PATH or synthetic")


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
):
    """Yield (images float [B, C, H, W] in [0, 1], labels [B]); shuffled when a generator is given.

    ``shard=(rank, world_size)`` is the distributed sampler: every rank draws the same
    permutation and takes its own 1/world_size slice of each global batch of ``batch_size``.
    """
    rank, world = shard
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size][rank::world]
        yield split.images[idx].float().div_(255), split.labels[idx]
