"""The latent-space atlas operations, free of HTTP: the stored map of a sample of test images'
codes (models/atlas.py), points of its plane decoded, and an image placed on it.

The map's reply is the same for every request of a model and projection, so its JSON is
built once per loaded model (``LoadedModel.replies``) and served as bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import torch

from models.atlas import DESCRIPTIONS, INVERSES, Atlas, AtlasError

from .inference import Operations
from .problems import InvalidInput, NotSupported
from .registry import LoadedModel


def atlas_of(lm: LoadedModel) -> Atlas:
    """The model's atlas; 400 saying how to make one when it has none."""
    if lm.atlas is None:
        raise NotSupported(
            f"model {lm.name!r} has no latent-space atlas (atlas.safetensors beside its weights); "
            f"make one with: python -m training atlas --model weights/{lm.name}"
        )
    return lm.atlas


def projection_of(atlas: Atlas, projection: str) -> str:
    try:
        return atlas.check(projection)
    except AtlasError as exc:
        raise InvalidInput(str(exc)) from None


def map_reply(lm: LoadedModel, projection: str) -> bytes:
    """The JSON of the map: every point, its label, the class names, the bounds, what the
    projection is and how a point decodes, and where the thumbnails are."""
    atlas = atlas_of(lm)
    projection = projection_of(atlas, projection)
    cached = lm.replies.get(f"atlas:{projection}")
    if cached is not None:
        return cached
    (x0, x1), (y0, y1) = atlas.bounds(projection)
    reply: dict[str, Any] = {
        "model": lm.name,
        "projection": projection,
        "projections": atlas.projections,
        "description": DESCRIPTIONS[projection],
        "inverse": INVERSES[projection],
        "source": atlas.source,
        "count": len(atlas.labels),
        "class_names": list(atlas.class_names) or lm.class_names,
        "bounds": {"x": [x0, x1], "y": [y0, y1]},
        "points": [[round(x, 4), round(y, 4)] for x, y in atlas.points[projection].tolist()],
        "labels": atlas.labels.tolist(),
        "thumbnails": None if lm.thumbnails is None else {
            "url": f"/v1/models/{lm.name}/atlas/thumbnails.png",
            "tile": list(atlas.thumbnails.tile) if atlas.thumbnails else None,
            "columns": atlas.thumbnails.columns if atlas.thumbnails else None,
        },
    }  # fmt: skip
    if projection == "pca":
        reply["explained_variance"] = [round(v, 4) for v in atlas.explained.tolist()]
    body = json.dumps(reply, separators=(",", ":")).encode()
    lm.replies[f"atlas:{projection}"] = body
    return body


def thumbnails_of(lm: LoadedModel) -> bytes:
    atlas_of(lm)
    if lm.thumbnails is None:
        raise NotSupported(f"model {lm.name!r}'s atlas has no thumbnails (atlas.png)")
    return lm.thumbnails


async def decode_points(
    ops: Operations, lm: LoadedModel, points: list[list[float]], projection: str,
    pixels: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Points [[x, y], ...] of the plane -> their decoded images, through the projection's
    inverse (models/atlas.py); points far off the map are refused with a message."""
    atlas = atlas_of(lm)
    projection = projection_of(atlas, projection)
    try:
        z = atlas.to_code(projection, torch.tensor(points, dtype=torch.float32))
    except AtlasError as exc:
        raise InvalidInput(str(exc)) from None
    return await ops.decode(lm, z, pixels=pixels)


async def locate(
    ops: Operations, lm: LoadedModel, x: torch.Tensor, projection: str
) -> dict[str, Any]:
    """An image x [1, C, H, W] -> its code, its point on the plane, and the classes of its
    nearest neighbours among the atlas's codes."""
    atlas = atlas_of(lm)
    projection = projection_of(atlas, projection)
    z = (await ops.encode(lm, x)).latent.float()
    point = atlas.to_plane(projection, z)[0].tolist()
    names = list(atlas.class_names) or lm.class_names
    votes = Counter(
        names[i] if 0 <= i < len(names) else str(i) for i in atlas.neighbour_labels(z)[0].tolist()
    )
    return {
        "projection": projection,
        "point": [round(v, 4) for v in point],
        "latent": z[0].tolist(),
        "neighbour_classes": dict(votes.most_common()),
    }
