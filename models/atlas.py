"""A latent-space atlas: where a fixed sample of test images lives in a model's code, on a plane.

The picture every tutorial on autoencoders draws by hand (a 2-D map of the test set's codes,
coloured by class), stored with the weights so the service can show it live and map points
both ways:

- ``pca``: the plane of the codes' two principal components (Pearson 1901; computed by SVD of
  the centred codes). Linear both ways: a point p decodes from the code mean + p @ components,
  which projects back onto p exactly. What lies off the plane is lost, so a point decodes to
  the average of the codes that project there, not to one image.
- ``tsne``: t-SNE (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE", JMLR), which
  keeps neighbours together and separates classes far better, but has no inverse and no
  out-of-sample map. Both ways go through the sample's nearest neighbours instead: a point of
  the plane decodes the inverse-distance-weighted mean of the codes of its ``NEIGHBOURS``
  nearest points on the plane; a new code lands at the weighted mean of the points of its
  nearest codes. Between neighbours of one class the decoded image is a sharp member of it.

Files beside the weights, plain data, never unpickled: ``atlas.safetensors`` (the codes, their
labels, every projection's points, the PCA basis; a header with the format, the sample's
source and the thumbnail layout) and ``atlas.png`` (the sample's images as one sprite sheet,
row-major, for the hover thumbnails; the same sample gives the same file for every model).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .base import LatentModel

ATLAS_FILE = "atlas.safetensors"
THUMBNAILS_FILE = "atlas.png"
FORMAT = "1"
PROJECTIONS = ("pca", "tsne")
NEIGHBOURS = 8
#: how far outside the sample's bounding box (in units of its width and height) a point of
#: the plane may be: beyond it nothing of the atlas says what the model does there
MARGIN = 0.25
MAX_ATLAS_BYTES = 16 << 20
MAX_THUMBNAIL_PIXELS = 8_000_000
INVERSES = {
    "pca": "exact on the plane: code = mean + point @ components (the part off the plane is "
    "the sample mean's)",
    "tsne": f"inverse-distance-weighted mean of the codes of the {NEIGHBOURS} nearest sample "
    "points; new codes land at the weighted mean of the points of their nearest codes",
}
DESCRIPTIONS = {
    "pca": "PCA: the plane of the codes' first two principal components",
    "tsne": "t-SNE (scikit-learn, perplexity 30, PCA initialisation)",
}


def has_atlas(model: LatentModel) -> bool:
    """Whether an atlas applies: the model has a code to map and a decoder to map back."""
    return {"encode", "decode"} <= set(model.operations) and model.latent_dim > 0


class AtlasError(ValueError):
    """An atlas file that cannot be read, or a request the atlas cannot answer."""


@dataclasses.dataclass(frozen=True)
class Thumbnails:
    """Layout of the sprite sheet: tiles of ``tile`` = (height, width) pixels, ``columns``
    per row, image i at row i // columns, column i % columns."""

    tile: tuple[int, int]
    columns: int


@dataclasses.dataclass(frozen=True, eq=False)
class Atlas:
    """The sample's codes [N, K], labels [N] (-1: none) and its points [N, 2] per projection;
    the PCA basis (mean [K], components [2, K] orthonormal rows, explained variance ratios [2])."""

    codes: torch.Tensor
    labels: torch.Tensor
    points: dict[str, torch.Tensor]
    mean: torch.Tensor
    components: torch.Tensor
    explained: torch.Tensor
    source: str
    thumbnails: Thumbnails | None = None
    class_names: tuple[str, ...] = ()  # the names of the labels 0, 1, ...

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        if n < NEIGHBOURS:
            raise AtlasError(f"an atlas needs at least {NEIGHBOURS} images, got {n}")
        if self.labels.shape != (n,):
            raise AtlasError(f"labels: expected [{n}], got {list(self.labels.shape)}")
        if "pca" not in self.points:
            raise AtlasError("an atlas always has the pca projection")
        for name, p in self.points.items():
            if name not in PROJECTIONS:
                raise AtlasError(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")
            if p.shape != (n, 2) or not torch.isfinite(p).all():
                raise AtlasError(f"points_{name}: expected [{n}, 2] finite, got {list(p.shape)}")
        if self.mean.shape != (k,) or self.components.shape != (2, k):
            raise AtlasError(f"the PCA basis does not match codes of size {k}")
        if not (torch.isfinite(self.codes).all() and torch.isfinite(self.components).all()):
            raise AtlasError("codes and the PCA basis must be finite")

    @property
    def projections(self) -> list[str]:
        return [p for p in PROJECTIONS if p in self.points]

    def bounds(self, projection: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x min, x max), (y min, y max)) of the sample's points."""
        return self._bounds[self.check(projection)]

    @functools.cached_property  # asked by every decode of a point; the points never change
    def _bounds(self) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
        out = {}
        for name, p in self.points.items():
            lo, hi = p.min(0).values.tolist(), p.max(0).values.tolist()
            out[name] = ((lo[0], hi[0]), (lo[1], hi[1]))
        return out

    def check(self, projection: str) -> str:
        if projection not in self.points:
            raise AtlasError(
                f"projection: {projection!r} is not in this atlas; it has: "
                f"{', '.join(self.projections)}"
            )
        return projection

    def to_plane(self, projection: str, z: torch.Tensor) -> torch.Tensor:
        """Codes z [B, K] -> their points on the plane [B, 2]."""
        if z.ndim != 2 or z.shape[1] != self.codes.shape[1]:
            raise AtlasError(f"codes: expected [B, {self.codes.shape[1]}], got {list(z.shape)}")
        if self.check(projection) == "pca":
            return (z.float() - self.mean) @ self.components.T
        return _weighted_neighbours(z.float(), self.codes, self.points[projection])

    def to_code(self, projection: str, points: torch.Tensor) -> torch.Tensor:
        """Points [B, 2] of the plane -> codes [B, K]; a point far outside the sample's
        bounding box (more than MARGIN of its size) is refused with a message naming it."""
        if points.ndim != 2 or points.shape[1] != 2 or not torch.isfinite(points).all():
            raise AtlasError(f"points: expected [B, 2] finite numbers, got {list(points.shape)}")
        (x0, x1), (y0, y1) = self.bounds(projection)
        mx, my = MARGIN * (x1 - x0), MARGIN * (y1 - y0)
        for i, (x, y) in enumerate(points.tolist()):
            if not (x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my):
                raise AtlasError(
                    f"points[{i}]: ({x:.4g}, {y:.4g}) is outside the atlas, whose {projection} "
                    f"points span x {x0:.4g}..{x1:.4g} and y {y0:.4g}..{y1:.4g} "
                    f"(a margin of {MARGIN:.0%} is allowed)"
                )
        if projection == "pca":
            return self.mean + points.float() @ self.components
        return _weighted_neighbours(points.float(), self.points[projection], self.codes)

    def neighbour_labels(self, z: torch.Tensor) -> torch.Tensor:
        """The labels of each code's NEIGHBOURS nearest sample codes: [B, NEIGHBOURS]."""
        nearest = _distances(z.float(), self.codes).topk(NEIGHBOURS, largest=False).indices
        return self.labels[nearest]


def _distances(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [B, N], computed directly: the matrix-product shortcut is off by
    about 1e-3 at zero, and a query on a sample point must find that point."""
    return torch.cdist(query, keys, compute_mode="donot_use_mm_for_euclid_dist")


def _weighted_neighbours(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """For queries [B, D] in the space of keys [N, D]: the inverse-square-distance weighted
    mean of the values [N, E] of the NEIGHBOURS nearest keys: [B, E]. A query on a key is that
    key's value."""
    distance, index = _distances(query, keys).topk(NEIGHBOURS, largest=False)  # [B, k]
    weights = 1.0 / (distance.double() ** 2 + 1e-12)
    weights = weights / weights.sum(1, keepdim=True)
    return (weights.unsqueeze(2) * values[index].double()).sum(1).float()


def fit_pca(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes [N, K] -> (mean [K], components [2, K] orthonormal, explained variance ratios [2])."""
    x = codes.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    components = vh[:2]
    # a fixed sign per component (largest |loading| positive): the same codes give the same map
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * signs
    if components.shape[0] < 2:  # a one-unit code: the plane's second axis is flat
        components = torch.cat([components, torch.zeros(1, x.shape[1], dtype=x.dtype)])
        s = torch.cat([s, torch.zeros(1, dtype=s.dtype)])
    total = (s**2).sum().clamp_min(1e-30)
    return mean.float(), components.float(), ((s[:2] ** 2) / total).float()


def sprite(images: torch.Tensor) -> tuple[Image.Image, Thumbnails]:
    """Images [N, C, H, W] in [0, 1] -> one sprite sheet (grey or RGB) and its layout."""
    n, c, h, w = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    sheet = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(pixels):
        r, col = divmod(i, columns)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    mode = "L" if c == 1 else "RGB"
    return Image.fromarray(sheet[:, :, 0] if c == 1 else sheet, mode), Thumbnails((h, w), columns)


def write_atlas(
    folder: str | os.PathLike[str], atlas: Atlas, thumbnails: Image.Image | None = None
) -> Path:
    """Write ``atlas.safetensors`` (and ``atlas.png`` when thumbnails are given) atomically."""
    folder = Path(folder)
    tensors = {
        "codes": atlas.codes.half() if atlas.codes.shape[1] > 64 else atlas.codes.float(),
        "labels": atlas.labels.long(),
        "pca_mean": atlas.mean.float(),
        "pca_components": atlas.components.float(),
        "pca_explained": atlas.explained.float(),
        **{f"points_{name}": p.float().contiguous() for name, p in atlas.points.items()},
    }
    meta = {
        "format": FORMAT, "source": atlas.source, "class_names": json.dumps(atlas.class_names)
    }  # fmt: skip
    if thumbnails is not None and atlas.thumbnails is not None:
        meta["thumbnails"] = json.dumps(dataclasses.asdict(atlas.thumbnails))
        tmp_png = folder / (THUMBNAILS_FILE + ".tmp")
        thumbnails.save(tmp_png, "PNG", optimize=True)
        os.replace(tmp_png, folder / THUMBNAILS_FILE)
    file = folder / ATLAS_FILE
    tmp = folder / (ATLAS_FILE + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, file)
    return file


def read_atlas(folder: str | os.PathLike[str], latent_dim: int) -> Atlas | None:
    """The atlas beside a model's weights, None if it has none; a broken or mismatched file
    raises AtlasError naming it."""
    file = Path(folder) / ATLAS_FILE
    if not file.is_file():
        return None
    try:
        if file.stat().st_size > MAX_ATLAS_BYTES:
            raise AtlasError(f"larger than {MAX_ATLAS_BYTES} bytes")
        with safe_open(str(file), "pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise AtlasError(f"not a format-{FORMAT} atlas")
        t = load_file(str(file))
        layout = json.loads(meta["thumbnails"]) if "thumbnails" in meta else None
        thumbs = Thumbnails(tuple(layout["tile"]), int(layout["columns"])) if layout else None
        atlas = Atlas(
            codes=t["codes"].float(), labels=t["labels"].long(),
            points={p: t[f"points_{p}"].float() for p in PROJECTIONS if f"points_{p}" in t},
            mean=t["pca_mean"].float(), components=t["pca_components"].float(),
            explained=t["pca_explained"].float(), source=str(meta.get("source", "")),
            thumbnails=thumbs, class_names=tuple(json.loads(meta.get("class_names", "[]"))),
        )  # fmt: skip
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise AtlasError(f"{file}: {exc}") from None
    if atlas.codes.shape[1] != latent_dim:
        raise AtlasError(
            f"{file}: codes of size {atlas.codes.shape[1]}, but the model's latent size is "
            f"{latent_dim} (an atlas of other weights: rerun python -m training atlas)"
        )
    return atlas


def read_thumbnails(folder: str | os.PathLike[str], atlas: Atlas) -> bytes | None:
    """The PNG bytes of ``atlas.png`` when it matches the atlas's layout, else None."""
    file = Path(folder) / THUMBNAILS_FILE
    if atlas.thumbnails is None or not file.is_file():
        return None
    data = file.read_bytes()
    h, w = atlas.thumbnails.tile
    rows = math.ceil(len(atlas.labels) / atlas.thumbnails.columns)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG" or img.width * img.height > MAX_THUMBNAIL_PIXELS:
                raise AtlasError(f"{file}: not a PNG of at most {MAX_THUMBNAIL_PIXELS} pixels")
            if img.size != (atlas.thumbnails.columns * w, rows * h):
                raise AtlasError(f"{file}: {img.size} does not match the atlas's layout")
    except (OSError, Image.DecompressionBombError) as exc:
        raise AtlasError(f"{file}: {exc}") from None
    return data
