"""OpenAPI request bodies with examples, for routes that read the body themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAAAAABX3VL4AAAADklEQVR4nGNgYGBgYGAAAAAFAAGZ4I5HAAAAAElFTkSuQmCC"


def body(
    params: type[BaseModel], example: dict[str, Any], images: tuple[str, ...] = ()
) -> dict[str, Any]:
    schema = params.model_json_schema()
    props = dict(schema.get("properties", {}))
    for field in images:
        props[field] = {"type": "string", "description": "base64 PNG/JPEG, or a data: URL"}
    json_schema = {**schema, "properties": props}
    json_schema.pop("$defs", None)
    content: dict[str, Any] = {
        "application/json": {"schema": json_schema, "example": example},
    }
    if images:
        form_props = {k: v for k, v in props.items() if k not in images}
        for field in images:
            form_props[field] = {"type": "string", "format": "binary"}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": form_props}}
        content["image/png"] = {"schema": {"type": "string", "format": "binary"}}
        content["image/jpeg"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": bool(images), "content": content}}


IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON with PNG data URLs (default), or image/png with Accept/format=png",
        "content": {
            "application/json": {
                "example": {"image": TINY_PNG, "shape": [1, 28, 28], "count": 1, "timing_ms": 1.7}
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"description": "bad input or an operation the model cannot do"},
    404: {"description": "unknown model; the message lists the available ones"},
    413: {"description": "body or image too large"},
    415: {"description": "not an image type we decode"},
    422: {"description": "invalid parameters"},
    503: {"description": "at capacity (Retry-After) or shutting down"},
}
