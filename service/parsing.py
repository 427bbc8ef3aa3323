"""Read a request in any of the three accepted shapes into (images, params).

- ``multipart/form-data``: files ``image`` (and ``image_b``), other parameters as fields;
- ``application/json``: ``{"image": "<base64 or data: URL>", ...parameters}``;
- ``image/png`` / ``image/jpeg`` (or another image type) as the raw body, parameters in the
  query string.
Query parameters (except ``format``) are parameters in every shape.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .imaging import ImageError, decode_base64

IMAGE_FIELDS = ("image", "image_b", "image_c")
RAW_IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "image/bmp"}
RESERVED_QUERY = {"format"}
P = TypeVar("P", bound=BaseModel)


@dataclasses.dataclass
class Parsed:
    images: dict[str, bytes]
    params: dict[str, Any]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPException(400, "JSON body is nested too deeply") from None
    except UnicodeDecodeError:
        raise HTTPException(400, "JSON body is not UTF-8") from None
    except ValueError as exc:
        raise HTTPException(400, f"invalid JSON body: {exc}") from None


async def parse_request(request: Request, image_fields: tuple[str, ...] = ()) -> Parsed:
    """Split the request into image bytes and plain parameters, whatever its shape."""
    params: dict[str, Any] = {
        k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY
    }
    images: dict[str, bytes] = {}
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = parse_json(await request.body())
        if not isinstance(data, dict):
            raise HTTPException(400, "JSON body must be an object")
        for field in IMAGE_FIELDS:
            if field in data:
                if field not in image_fields:
                    raise HTTPException(422, f"{field}: this operation takes no image")
                try:
                    images[field] = decode_base64(data.pop(field), field)
                except ImageError as exc:
                    raise HTTPException(exc.status, str(exc)) from None
        noise = data.pop("noise", None)
        if noise is not None:
            params.update(_flatten_noise(noise))
        params.update(data)
    elif ctype == "multipart/form-data":
        async with request.form(max_files=len(IMAGE_FIELDS), max_fields=32) as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in image_fields:
                        raise HTTPException(
                            422,
                            f"unexpected file field {key!r}; files go in {list(image_fields) or 'none'}",
                        )
                    images[key] = await value.read()
                elif key in image_fields:
                    raise HTTPException(
                        422, f"{key}: send the image as a file part, not a text field"
                    )
                elif key == "noise":
                    params.update(_flatten_noise(parse_json(value.encode())))
                elif value.lstrip().startswith("["):  # a list (a latent) sent as JSON text
                    params[key] = parse_json(value.encode())
                else:
                    params[key] = value
    elif ctype in RAW_IMAGE_TYPES:
        if "image" not in image_fields:
            raise HTTPException(415, "this operation takes parameters, not an image: send JSON")
        images["image"] = await request.body()
    elif ctype:
        accepted = "application/json, multipart/form-data" + (
            ", image/png or image/jpeg" if image_fields else ""
        )
        raise HTTPException(415, f"unsupported Content-Type {ctype!r}; send {accepted}")
    elif await request.body():
        raise HTTPException(415, "the body has no Content-Type; send application/json")
    return Parsed(images, params)


def _flatten_noise(noise: Any) -> dict[str, Any]:
    if not isinstance(noise, dict):
        raise HTTPException(
            422, 'noise: expected an object like {"kind": "gaussian", "level": 0.3, "seed": 7}'
        )
    unknown = set(noise) - {"kind", "level", "seed"}
    if unknown:
        raise HTTPException(422, f"noise: unknown fields {sorted(unknown)}; use kind, level, seed")
    return {f"noise_{k}": v for k, v in noise.items()}


def validate(model: type[P], params: dict[str, Any]) -> P:
    """Validate parameters, turning pydantic's errors into one readable 422 message."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown field; accepted: {', '.join(sorted(model.model_fields))}"
            parts.append(f"{where}: {msg}")
        raise HTTPException(422, "; ".join(parts)) from None
