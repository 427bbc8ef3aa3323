"""OpenAPI for routes that read the body themselves: request bodies with examples, and the
replies' schemas (replies.py), in shapes that client generators digest.

Each body is described with one content type: JSON for routes that take no image,
multipart/form-data (images as files) for routes that do. The other shapes the server accepts
(JSON with base64 images, the raw image as the body with parameters in the query string) are
said in the body's description, outside the schema: openapi-python-client 0.29 writes modules
that fail at import (``NameError: Unset``) for a body of more than one content type, and could
not handle binary image types at all (issue 16; tests/test_openapi_clients.py).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from ..replies import ErrorReply

TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAAAAABX3VL4AAAADklEQVR4nGNgYGBgYGAAAAAFAAGZ4I5HAAAAAElFTkSuQmCC"
RAW_BODY = (
    "multipart/form-data: images as files, the other parameters as fields. Also accepted, "
    "outside this schema: application/json with each image as base64 or a data: URL in its "
    "field (example below), or the image itself as the body (Content-Type image/png or "
    "image/jpeg) with the other parameters in the query string."
)


def body(
    params: type[BaseModel], example: dict[str, Any], images: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The request body of an operation with ``params``; ``images`` are its image fields
    (the first one required when it is the only one)."""
    schema = params.model_json_schema()
    schema.pop("$defs", None)
    if not images:
        content = {"application/json": {"schema": schema, "example": example}}
        return {"requestBody": {"required": False, "content": content}}
    fields = dict(schema.get("properties", {}))
    for field in images:
        fields[field] = {"type": "string", "format": "binary"}
    form: dict[str, Any] = {
        "title": f"{params.__name__}Form",
        "type": "object",
        "properties": fields,
    }
    if len(images) == 1:
        form["required"] = list(images)
    return {
        "requestBody": {
            "required": True,
            "description": f"{RAW_BODY} JSON example: `{json.dumps(example)}`",
            "content": {"multipart/form-data": {"schema": form}},
        }
    }


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input or an operation the model cannot do", "model": ErrorReply},
    404: {"description": "unknown model; the message lists the available ones", "model": ErrorReply},
    413: {"description": "body or image too large", "model": ErrorReply},
    415: {"description": "not an image type we decode", "model": ErrorReply},
    422: {"description": "invalid parameters", "model": ErrorReply},
    503: {"description": "at capacity (Retry-After) or shutting down", "model": ErrorReply},
}  # fmt: skip


def json_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The responses of a route that answers JSON only."""
    return {200: {"description": "the result", "model": model}, **ERRORS}


def image_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The responses of a route that answers images: JSON by default, or PNG (GIF)."""
    return {
        200: {
            "description": "JSON with PNG data URLs (default) or nested arrays (format=array); "
            "image/png with Accept or format=png (image/gif for interpolate)",
            "model": model,
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **ERRORS,
    }


def add_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Put ``schemas`` into the app's OpenAPI components: the schemas that hand-written
    request bodies (openapi_extra) refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema or spec

    app.openapi = openapi  # type: ignore[method-assign]
