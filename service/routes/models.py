"""/v1/models: list models, describe one, and run every operation on it."""

from __future__ import annotations

import time
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..deps import AppState, State, find_model
from ..imaging import image_to_tensor
from ..inference import check_latents, class_index, new_seed
from ..parsing import Parsed, parse_request, validate
from ..registry import LoadedModel
from ..responses import choose_format, image_reply
from ..schemas import (
    ArithmeticParams,
    DecodeParams,
    DenoiseParams,
    GenerateParams,
    ImageParams,
    InterpolateParams,
)
from .openapi import IMAGE_RESPONSES, TINY_PNG, body

router = APIRouter(prefix="/v1/models", tags=["models"])
IMAGE_FORMATS = ("json", "array", "png")
BIG_UPLOAD = 256 * 1024  # decode bigger uploads off the event loop
ImageParamsT = TypeVar("ImageParamsT", bound=ImageParams)


@router.get("", summary="List the served models")
async def list_models(state: State) -> dict[str, Any]:
    """Every model that is serving, with its shape, operations and card metrics."""
    return {"models": [lm.describe() for lm in state.registry.models.values()]}


@router.get("/{name}", summary="Describe one model")
async def describe_model(
    name: Annotated[str, Path(examples=["vae-fashion"])], state: State
) -> dict[str, Any]:
    """Family, image shape, latent size, operations, class names and test metrics."""
    return find_model(state, name).describe()


async def images_from(
    state: AppState, lm: LoadedModel, parsed: Parsed, fields: tuple[str, ...], invert: bool
) -> dict[str, torch.Tensor]:
    out = {}
    for field in fields:
        data = parsed.images.get(field)
        if data is None:
            raise HTTPException(
                422, f"{field}: an image is required (multipart file, base64 in JSON, or raw body)"
            )
        args = (data, lm.model.image_shape, field, state.settings.max_image_pixels, invert)
        out[field] = (
            await run_in_threadpool(image_to_tensor, *args)
            if len(data) > BIG_UPLOAD
            else image_to_tensor(*args)
        )
    return out


async def one_image(
    state: AppState, lm: LoadedModel, request: Request, params_model: type[ImageParamsT]
) -> tuple[ImageParamsT, torch.Tensor]:
    """A single-image request in any shape -> (its parameters, the image [1, C, H, W])."""
    parsed = await parse_request(request, ("image",))
    params = validate(params_model, parsed.params)
    return params, (await images_from(state, lm, parsed, ("image",), params.invert))["image"]


def ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@router.post(
    "/{name}/encode", summary="Image -> latent", responses={k: v for k, v in IMAGE_RESPONSES.items() if k != 200},
    openapi_extra=body(ImageParams, {"image": TINY_PNG, "invert": False}, ("image",)),
)  # fmt: skip
async def encode(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """Encode an image; a VAE also returns the posterior mean and log-variance."""
    started = time.perf_counter()
    lm = find_model(state, name, "encode")
    _, x = await one_image(state, lm, request, ImageParams)
    result = await state.operations.encode(lm, x)
    reply: dict[str, Any] = {key: value[0].tolist() for key, value in result.items()}
    return {**reply, "latent_dim": lm.model.latent_dim, "model": name, "timing_ms": ms(started)}


@router.post(
    "/{name}/decode", summary="Latent(s) -> image(s)", responses=IMAGE_RESPONSES,
    openapi_extra=body(DecodeParams, {"latent": [0.0] * 4}),
)  # fmt: skip
async def decode(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> Response:
    """Decode one latent (`latent`) or several (`latents`)."""
    started = time.perf_counter()
    lm = find_model(state, name, "decode")
    fmt = choose_format(request, IMAGE_FORMATS)
    params = validate(DecodeParams, (await parse_request(request)).params)
    rows = [params.latent] if params.latent is not None else params.latents or []
    field = "latent" if params.latent is not None else "latents"
    z = check_latents(lm, rows, field)
    images = await state.operations.decode(lm, z, pixels=fmt == "json")
    meta = {"model": name, "timing_ms": ms(started)}
    return image_reply(
        fmt, {"images": images}, meta, state.settings.png_compress_level, single=False
    )


@router.post(
    "/{name}/reconstruct", summary="Image -> image through the code", responses=IMAGE_RESPONSES,
    openapi_extra=body(ImageParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def reconstruct(
    name: Annotated[str, Path(examples=["ae-fashion"])], request: Request, state: State
) -> Response:
    """Encode and decode an image."""
    started = time.perf_counter()
    lm = find_model(state, name, "reconstruct")
    fmt = choose_format(request, IMAGE_FORMATS)
    _, x = await one_image(state, lm, request, ImageParams)
    out = await state.operations.reconstruct(lm, x, pixels=fmt in ("json", "png"))
    meta = {"model": name, "timing_ms": ms(started)}
    return image_reply(fmt, {"image": out}, meta, state.settings.png_compress_level, single=True)


@router.post(
    "/{name}/denoise", summary="Noisy image -> clean image", responses=IMAGE_RESPONSES,
    openapi_extra=body(DenoiseParams, {"image": TINY_PNG, "noise": {"kind": "gaussian", "level": 0.3, "seed": 7}}, ("image",)),
)  # fmt: skip
async def denoise(
    name: Annotated[str, Path(examples=["dae-fashion"])], request: Request, state: State
) -> Response:
    """Denoise an image; with `noise`, corrupt it on the server first and return both."""
    started = time.perf_counter()
    lm = find_model(state, name, "denoise")
    fmt = choose_format(request, IMAGE_FORMATS)
    params, x = await one_image(state, lm, request, DenoiseParams)
    meta: dict[str, Any] = {"model": name}
    if params.noise_kind is not None:
        seed = params.noise_seed if params.noise_seed is not None else new_seed()
        x = state.operations.corrupt(x, params.noise_kind, params.noise_level, seed)
        meta.update(noise_kind=params.noise_kind, noise_level=params.noise_level, noise_seed=seed)
    out = await state.operations.reconstruct(lm, x, pixels=fmt in ("json", "png"))
    images = {"image": out, "input": x} if params.include_input else {"image": out}
    meta["timing_ms"] = ms(started)
    return image_reply(fmt, images, meta, state.settings.png_compress_level, single=True)


@router.post(
    "/{name}/interpolate", summary="Frames between two images, latents or seeds", responses=IMAGE_RESPONSES,
    openapi_extra=body(InterpolateParams, {"seed_a": 1, "seed_b": 2, "steps": 8, "method": "slerp"}, ("image", "image_b")),
)  # fmt: skip
async def interpolate(
    name: Annotated[str, Path(examples=["gan-fashion"])], request: Request, state: State
) -> Response:
    """Decode a path between two ends: `image`+`image_b`, `latent_a`+`latent_b`, or `seed_a`+`seed_b`."""
    started = time.perf_counter()
    lm = find_model(state, name, "interpolate")
    fmt = choose_format(request, ("json", "array", "png", "gif"))
    parsed = await parse_request(request, ("image", "image_b"))
    params = validate(InterpolateParams, parsed.params)
    if params.steps > state.settings.max_steps:
        raise HTTPException(422, f"steps: at most {state.settings.max_steps}, got {params.steps}")
    za, zb = await interpolation_ends(state, lm, parsed, params)
    frames = await state.operations.interpolate(lm, za, zb, params.steps, params.method)
    meta = {"model": name, "steps": params.steps, "method": params.method, "timing_ms": ms(started)}
    return image_reply(
        fmt, {"frames": frames}, meta, state.settings.png_compress_level, single=False
    )


async def interpolation_ends(
    state: AppState, lm: LoadedModel, parsed: Parsed, params: InterpolateParams
) -> tuple[torch.Tensor, torch.Tensor]:
    given = {
        "images": bool(parsed.images),
        "latents": params.latent_a is not None or params.latent_b is not None,
        "seeds": params.seed_a is not None or params.seed_b is not None,
    }
    if not given["seeds"] and (params.class_a is not None or params.class_b is not None):
        raise HTTPException(422, "class_a and class_b apply to seed ends (seed_a, seed_b) only")
    if sum(given.values()) != 1:
        raise HTTPException(
            422,
            "give exactly one pair of ends: image + image_b, latent_a + latent_b, or seed_a + seed_b",
        )
    if given["images"]:
        if "encode" not in lm.operations:
            raise HTTPException(
                400,
                f"model {lm.name!r} cannot encode images; give latent_a and latent_b",
            )
        x = await images_from(state, lm, parsed, ("image", "image_b"), params.invert)
        z = (await state.operations.encode(lm, torch.cat([x["image"], x["image_b"]])))["latent"]
        return z[0], z[1]
    if given["latents"]:
        if params.latent_a is None or params.latent_b is None:
            raise HTTPException(422, "give both latent_a and latent_b")
        z = check_latents(lm, [params.latent_a, params.latent_b], "latent_a/latent_b")
        return z[0], z[1]
    if "generate" not in lm.operations:
        raise HTTPException(
            400, f"model {lm.name!r} has no prior to draw seeds from; use images or latents"
        )
    if params.seed_a is None or params.seed_b is None:
        raise HTTPException(422, "give both seed_a and seed_b")
    ops = state.operations
    class_a = class_index(lm, params.class_a, "class_a")
    class_b = class_index(lm, params.class_b, "class_b")
    za = ops.prior_latents(lm, 1, params.seed_a, params.temperature, class_a)[0]
    zb = ops.prior_latents(lm, 1, params.seed_b, params.temperature, class_b)[0]
    return za, zb


#: arithmetic term -> (its image field, its latent field)
ARITHMETIC_TERMS = {"a": ("image", "latent_a"), "b": ("image_b", "latent_b"), "c": ("image_c", "latent_c")}  # fmt: skip


@router.post(
    "/{name}/arithmetic", summary="Latent arithmetic: c + scale * (a - b)", responses=IMAGE_RESPONSES,
    openapi_extra=body(ArithmeticParams, {"latent_a": [0.5] * 4, "latent_b": [0.0] * 4, "latent_c": [0.1] * 4}, ("image", "image_b", "image_c")),
)  # fmt: skip
async def arithmetic(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> Response:
    """Decode c + scale * (a - b), each term given as an image (`image`, `image_b`, `image_c`,
    encoded first) or a latent (`latent_a`, `latent_b`, `latent_c`): "ankle boot minus sandal
    plus another sandal" moves the other sandal the way the boot differs from the first."""
    started = time.perf_counter()
    lm = find_model(state, name, "arithmetic")
    fmt = choose_format(request, IMAGE_FORMATS)
    parsed = await parse_request(request, ("image", "image_b", "image_c"))
    params = validate(ArithmeticParams, parsed.params)
    z = await arithmetic_terms(state, lm, parsed, params)
    result = z["c"] + params.scale * (z["a"] - z["b"])  # [K]
    if not torch.isfinite(result).all() or float(result.abs().max()) > 1e4:
        raise HTTPException(422, "the result latent is not finite or exceeds magnitude 10000")
    decoded = await state.operations.decode(lm, torch.stack([result, z["a"], z["b"], z["c"]]))
    images = {"image": decoded[:1]}
    if params.include_terms:
        images.update(a=decoded[1:2], b=decoded[2:3], c=decoded[3:4])
    meta = {"model": name, "scale": params.scale, "timing_ms": ms(started)}
    extra = {"latent": result.tolist()}
    return image_reply(fmt, images, meta, state.settings.png_compress_level, True, extra)


async def arithmetic_terms(
    state: AppState, lm: LoadedModel, parsed: Parsed, params: ArithmeticParams
) -> dict[str, torch.Tensor]:
    """Each of a, b, c as a latent [K]: its latent as given, or its image encoded."""
    latents: dict[str, torch.Tensor] = {}
    to_encode = []
    for term, (image_field, latent_field) in ARITHMETIC_TERMS.items():
        latent = getattr(params, latent_field)
        has_image = image_field in parsed.images
        if has_image == (latent is not None):
            raise HTTPException(
                422, f"term {term}: give exactly one of {image_field} (an image) or {latent_field}"
            )
        if latent is not None:
            latents[term] = check_latents(lm, [latent], latent_field)[0]
        else:
            to_encode.append(term)
    if to_encode:
        if "encode" not in lm.operations:
            raise HTTPException(
                400, f"model {lm.name!r} cannot encode images; give latent_a, latent_b and latent_c"
            )
        fields = tuple(ARITHMETIC_TERMS[t][0] for t in to_encode)
        x = await images_from(state, lm, parsed, fields, params.invert)
        z = (await state.operations.encode(lm, torch.cat([x[f] for f in fields])))["latent"]
        latents.update(zip(to_encode, z, strict=True))
    return latents


@router.post(
    "/{name}/generate", summary="Sample new images", responses=IMAGE_RESPONSES,
    openapi_extra=body(GenerateParams, {"n": 16, "seed": 42, "temperature": 0.8}),
)  # fmt: skip
async def generate(
    name: Annotated[str, Path(examples=["gan-fashion"])], request: Request, state: State
) -> Response:
    """Draw `n` images from the prior; the same `seed` gives the same images on any replica.
    Class-conditional models (cvae, cgan) take `class` by name or index."""
    started = time.perf_counter()
    lm = find_model(state, name, "generate")
    fmt = choose_format(request, IMAGE_FORMATS)
    params = validate(GenerateParams, (await parse_request(request)).params)
    if params.n > state.settings.max_n:
        raise HTTPException(422, f"n: at most {state.settings.max_n}, got {params.n}")
    label = class_index(lm, params.class_, "class")
    seed = params.seed if params.seed is not None else new_seed()
    images = await state.operations.generate(
        lm, params.n, seed, params.temperature, label, pixels=fmt == "json"
    )
    meta: dict[str, Any] = {"model": name, "seed": seed, "temperature": params.temperature}
    if label is not None:
        meta["class"] = lm.class_names[label]
    meta["timing_ms"] = ms(started)
    return image_reply(
        fmt, {"images": images}, meta, state.settings.png_compress_level, single=False
    )


@router.post(
    "/{name}/classify", summary="Image -> class probabilities", responses={k: v for k, v in IMAGE_RESPONSES.items() if k != 200},
    openapi_extra=body(ImageParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def classify(
    name: Annotated[str, Path(examples=["classifier-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """Classify an image with a classifier model."""
    started = time.perf_counter()
    lm = find_model(state, name, "classify")
    _, x = await one_image(state, lm, request, ImageParams)
    probs = (await state.operations.classify(lm, x))[0]
    names = lm.class_names or [str(i) for i in range(len(probs))]
    return {
        "label": names[int(probs.argmax())],
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
        "model": name,
        "timing_ms": ms(started),
    }
