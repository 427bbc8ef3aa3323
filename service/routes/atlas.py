"""/v1/models/{name}/atlas: the latent-space map of a sample of test images, its thumbnails,
points of its plane decoded, and an image placed on it (service/atlas.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from .. import atlas
from ..deps import State
from ..parsing import parse_request, validate
from ..replies import AtlasDecodeReply, AtlasLocateReply, AtlasMap
from ..schemas import AtlasLocateParams, AtlasPointsParams, Projection
from .models import IMAGE_FORMATS, begin
from .openapi import TINY_PNG, body, image_responses, json_responses

router = APIRouter(prefix="/v1/models", tags=["atlas"])
Name = Annotated[str, Path(examples=["vae-fashion"])]


@router.get(
    "/{name}/atlas",
    summary="The latent-space map of a sample of test images",
    responses=json_responses(AtlasMap),
)
async def atlas_map(
    name: Name, request: Request, state: State,
    projection: Annotated[Projection, Query(description="the plane: pca or tsne")] = "pca",
) -> Response:  # fmt: skip
    """Every sampled test image's point on a 2-D projection of its code, its class label, the
    class names, the bounds, how the projection is inverted, and where the thumbnails are."""
    job = begin(state, name, request, "decode", formats=())
    return Response(atlas.map_reply(job.lm, projection), media_type="application/json")


# Not in the OpenAPI schema: a static image whose URL the map gives (``thumbnails.url``),
# and a PNG-only reply that client generators cannot type (openapi-python-client warns)
@router.get("/{name}/atlas/thumbnails.png", response_class=Response, include_in_schema=False)
async def atlas_thumbnails(name: Name, request: Request, state: State) -> Response:
    """Image i of the map is the tile at row i // columns, column i % columns."""
    job = begin(state, name, request, "decode", formats=())
    return Response(
        atlas.thumbnails_of(job.lm), media_type="image/png",
        headers={"Cache-Control": "public, max-age=3600"},
    )  # fmt: skip


@router.post(
    "/{name}/atlas/decode", summary="Points of the atlas's plane -> images", responses=image_responses(AtlasDecodeReply),
    openapi_extra=body(AtlasPointsParams, {"points": [[0.0, 0.0], [1.0, -0.5]], "projection": "pca"}),
)  # fmt: skip
async def atlas_decode(name: Name, request: Request, state: State) -> Response:
    """Decode each point through the projection's inverse (PCA: exactly; t-SNE: through the
    nearest sample points' codes). A drag across the map is a list of points: a path."""
    job = begin(state, name, request, "decode", IMAGE_FORMATS)
    params = validate(AtlasPointsParams, (await parse_request(request)).params)
    images = await atlas.decode_points(
        state.operations, job.lm, params.points, params.projection, pixels=job.fmt == "json"
    )
    return await job.images({"images": images}, single=False, projection=params.projection)


@router.post(
    "/{name}/atlas/locate", summary="Image -> its point on the atlas", response_model=None,
    responses=json_responses(AtlasLocateReply),
    openapi_extra=body(AtlasLocateParams, {"image": TINY_PNG, "projection": "pca"}, ("image",)),
)  # fmt: skip
async def atlas_locate(name: Name, request: Request, state: State) -> dict[str, Any]:
    """Encode the image and place its code on the plane, with the classes of its nearest
    neighbours among the atlas's codes."""
    job = begin(state, name, request, "encode", formats=())
    params, x = await job.one_image(AtlasLocateParams)
    return {**await atlas.locate(state.operations, job.lm, x, params.projection), **job.meta()}
