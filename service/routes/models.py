"""/v1/models: list models, describe one, and run every operation on it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from functools import partial
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .. import composition, density
from ..deps import State, find_model
from ..imaging import grid_tensor, image_to_tensor
from ..inference import class_index, inversion_method, new_seed, parse_latents
from ..parsing import Parsed, parse_request, validate
from ..problems import InvalidInput
from ..registry import LoadedModel
from ..replies import (
    AnomalyReply,
    ArithmeticReply,
    ClassifyReply,
    DecodeReply,
    DenoiseReply,
    EncodeReply,
    GenerateReply,
    InterpolateReply,
    LikelihoodReply,
    ModelDescription,
    ModelList,
    ReconstructReply,
)
from ..responses import choose_format, image_reply
from ..schemas import (
    ArithmeticParams,
    DecodeParams,
    DenoiseParams,
    EncodeParams,
    GenerateParams,
    ImageParams,
    InterpolateParams,
    LikelihoodParams,
)
from ..state import AppState
from .openapi import TINY_PNG, body, image_responses, json_responses

router = APIRouter(prefix="/v1/models", tags=["models"])
IMAGE_FORMATS = ("json", "array", "png")
BIG_UPLOAD = 256 * 1024  # decode bigger uploads off the event loop
GIF_MAX_CHAINS = 16  # a chain GIF's frames are grids of at most 4 x 4 chains
ImageParamsT = TypeVar("ImageParamsT", bound=ImageParams)


@router.get(
    "", summary="List the served models", response_model=None, responses=json_responses(ModelList)
)
async def list_models(state: State) -> dict[str, Any]:
    """Every model that is serving, with its shape, operations and card metrics."""
    return {"models": [lm.describe() for lm in state.registry.models.values()]}


@router.get(
    "/{name}",
    summary="Describe one model",
    response_model=None,
    responses=json_responses(ModelDescription),
)
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
            raise InvalidInput(
                f"{field}: an image is required (multipart file, base64 in JSON, or raw body)"
            )
        args = (data, lm.model.image_shape, field, state.settings.max_image_pixels, invert)
        out[field] = (
            await run_in_threadpool(image_to_tensor, *args)
            if len(data) > BIG_UPLOAD
            else image_to_tensor(*args)
        )
    return out


@dataclasses.dataclass
class Job:
    """One operation request: the skeleton every handler shares. ``begin`` finds the model
    (404/400/503) and the reply format (406) before any parsing; ``images`` shapes the reply
    with the model name and the timing."""

    state: AppState
    lm: LoadedModel
    request: Request
    fmt: str
    started: float

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.lm.name, **extra, "timing_ms": ms(self.started)}

    async def images(
        self, images: dict[str, torch.Tensor], single: bool, extra: dict[str, Any] | None = None,
        gif_scale: int = 4, gif_bounce: bool = True, **meta: Any,
    ) -> Response:  # fmt: skip
        """The reply; a large one (a GIF, or more images than LATENTSERVE_EXPENSIVE_ROWS) is
        encoded off the event loop (a 64-frame GIF held the loop for every other request),
        giving way to the cheap lane as the expensive lane's own work does."""
        level = self.state.settings.png_compress_level
        args = (self.fmt, images, self.meta(**meta), level, single, extra)
        rows = sum(len(v) for v in images.values())
        if self.fmt == "gif" or rows > self.state.settings.expensive_rows:
            operations = self.state.operations
            encode = partial(
                image_reply, *args, pace=operations.expensive.pacer(), gifs=operations.gifs,
                gif_scale=gif_scale, gif_bounce=gif_bounce,
            )  # fmt: skip
            return await asyncio.get_running_loop().run_in_executor(operations.encoder, encode)
        return image_reply(*args)

    async def one_image(
        self, params_model: type[ImageParamsT]
    ) -> tuple[ImageParamsT, torch.Tensor]:
        """A single-image request in any shape -> (its parameters, the image [1, C, H, W])."""
        parsed = await parse_request(self.request, ("image",))
        params = validate(params_model, parsed.params)
        images = await images_from(self.state, self.lm, parsed, ("image",), params.invert)
        return params, images["image"]


def begin(
    state: AppState, name: str, request: Request, operation: str,
    formats: tuple[str, ...] = IMAGE_FORMATS,
) -> Job:  # fmt: skip
    started = time.perf_counter()
    lm = find_model(state, name, operation)
    return Job(state, lm, request, choose_format(request, formats) if formats else "json", started)


def ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@router.post(
    "/{name}/encode", summary="Image -> latent", response_model=None, responses=json_responses(EncodeReply),
    openapi_extra=body(EncodeParams, {"image": TINY_PNG, "invert": False}, ("image",)),
)  # fmt: skip
async def encode(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """Encode an image; a VAE also returns the posterior mean and log-variance, a GAN (which
    encodes by search, `inversion` amortised or optimisation) the reconstruction error of
    the latent it found and the method."""
    job = begin(state, name, request, "encode", formats=())
    params, x = await job.one_image(EncodeParams)
    result = await state.operations.encode(job.lm, x, params.inversion)
    reply = {key: value[0].tolist() for key, value in result.tensors().items()}
    method = inversion_method(job.lm, params.inversion)
    searched = {} if method is None else {"inversion": method}
    return {**reply, "latent_dim": job.lm.model.latent_dim, **searched, **job.meta()}


@router.post(
    "/{name}/decode", summary="Latent(s) -> image(s)", responses=image_responses(DecodeReply),
    openapi_extra=body(DecodeParams, {"latent": [0.0] * 4}),
)  # fmt: skip
async def decode(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> Response:
    """Decode one latent (`latent`) or several (`latents`)."""
    job = begin(state, name, request, "decode")
    params = validate(DecodeParams, (await parse_request(request)).params)
    rows = [params.latent] if params.latent is not None else params.latents or []
    z = parse_latents(job.lm, rows, "latent" if params.latent is not None else "latents")
    images = await state.operations.decode(job.lm, z, pixels=job.fmt == "json")
    return await job.images({"images": images}, single=False)


@router.post(
    "/{name}/reconstruct", summary="Image -> image through the code", responses=image_responses(ReconstructReply),
    openapi_extra=body(EncodeParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def reconstruct(
    name: Annotated[str, Path(examples=["ae-fashion"])], request: Request, state: State
) -> Response:
    """Encode and decode an image (a GAN's code found by its `inversion` method)."""
    job = begin(state, name, request, "reconstruct")
    params, x = await job.one_image(EncodeParams)
    pixels = job.fmt in ("json", "png")
    out = await state.operations.reconstruct(job.lm, x, pixels, params.inversion)
    return await job.images({"image": out}, single=True)


@router.post(
    "/{name}/denoise", summary="Noisy image -> clean image", responses=image_responses(DenoiseReply),
    openapi_extra=body(DenoiseParams, {"image": TINY_PNG, "noise": {"kind": "gaussian", "level": 0.3, "seed": 7}}, ("image",)),
)  # fmt: skip
async def denoise(
    name: Annotated[str, Path(examples=["dae-fashion"])], request: Request, state: State
) -> Response:
    """Denoise an image; with `noise`, corrupt it on the server first and return both."""
    job = begin(state, name, request, "denoise")
    params, x = await job.one_image(DenoiseParams)
    noise: dict[str, Any] = {}
    if params.noise_kind is not None:
        seed = params.noise_seed if params.noise_seed is not None else new_seed()
        x = state.operations.corrupt(x, params.noise_kind, params.noise_level, seed)
        noise = {
            "noise_kind": params.noise_kind,
            "noise_level": params.noise_level,
            "noise_seed": seed,
        }
    out = await state.operations.reconstruct(job.lm, x, pixels=job.fmt in ("json", "png"))
    images = {"image": out, "input": x} if params.include_input else {"image": out}
    return await job.images(images, single=True, **noise)


@router.post(
    "/{name}/interpolate", summary="Frames between two images, latents or seeds", responses=image_responses(InterpolateReply),
    openapi_extra=body(InterpolateParams, {"seed_a": 1, "seed_b": 2, "steps": 8, "method": "slerp"}, ("image", "image_b")),
)  # fmt: skip
async def interpolate(
    name: Annotated[str, Path(examples=["gan-fashion"])], request: Request, state: State
) -> Response:
    """Decode a path between two ends: `image`+`image_b`, `latent_a`+`latent_b`, or `seed_a`+`seed_b`."""
    job = begin(state, name, request, "interpolate", ("json", "array", "png", "gif"))
    parsed = await parse_request(request, ("image", "image_b"))
    params = validate(InterpolateParams, parsed.params)
    if params.steps > state.settings.max_steps:
        raise InvalidInput(f"steps: at most {state.settings.max_steps}, got {params.steps}")
    load = partial(images_from, state, job.lm, parsed, invert=params.invert)
    za, zb = await composition.interpolation_ends(
        state.operations, job.lm, params, set(parsed.images), load
    )
    frames = await state.operations.interpolate(job.lm, za, zb, params.steps, params.method)
    return await job.images(
        {"frames": frames}, single=False, steps=params.steps, method=params.method
    )


@router.post(
    "/{name}/arithmetic", summary="Latent arithmetic: c + scale * (a - b)", responses=image_responses(ArithmeticReply),
    openapi_extra=body(ArithmeticParams, {"latent_a": [0.5] * 4, "latent_b": [0.0] * 4, "latent_c": [0.1] * 4}, ("image", "image_b", "image_c")),
)  # fmt: skip
async def arithmetic(
    name: Annotated[str, Path(examples=["vae-fashion"])], request: Request, state: State
) -> Response:
    """Decode c + scale * (a - b), each term given as an image (`image`, `image_b`, `image_c`,
    encoded first) or a latent (`latent_a`, `latent_b`, `latent_c`): "ankle boot minus sandal
    plus another sandal" moves the other sandal the way the boot differs from the first."""
    job = begin(state, name, request, "arithmetic")
    parsed = await parse_request(request, ("image", "image_b", "image_c"))
    params = validate(ArithmeticParams, parsed.params)
    load = partial(images_from, state, job.lm, parsed, invert=params.invert)
    result, decoded = await composition.arithmetic(
        state.operations, job.lm, params, set(parsed.images), load
    )
    images = {"image": decoded[:1]}
    if params.include_terms:
        images.update(a=decoded[1:2], b=decoded[2:3], c=decoded[3:4])
    return await job.images(images, True, {"latent": result.tolist()}, scale=params.scale)


@router.post(
    "/{name}/generate", summary="Sample new images", responses=image_responses(GenerateReply),
    openapi_extra=body(GenerateParams, {"n": 16, "seed": 42, "temperature": 0.8}),
)  # fmt: skip
async def generate(
    name: Annotated[str, Path(examples=["gan-fashion"])], request: Request, state: State
) -> Response:
    """Draw `n` images from the model; the same `seed` gives the same images on any replica.
    Class-conditional models (cvae, cgan) take `class` by name or index. A model with more
    than one way to generate takes `sampler`; a chain sampler takes `steps`, and with
    `format=gif` answers an animation of its chains, one grid per recorded step."""
    job = begin(state, name, request, "generate", (*IMAGE_FORMATS, "gif"))
    params = validate(GenerateParams, (await parse_request(request)).params)
    if params.n > state.settings.max_n:
        raise InvalidInput(f"n: at most {state.settings.max_n}, got {params.n}")
    label = class_index(job.lm, params.class_, "class")
    seed = params.seed if params.seed is not None else new_seed()
    gif = job.fmt == "gif"
    if gif and params.n > GIF_MAX_CHAINS:
        raise InvalidInput(f"n: a GIF animates at most {GIF_MAX_CHAINS} chains, got {params.n}")
    images = await state.operations.generate(
        job.lm, params.n, seed, params.temperature, label, pixels=job.fmt == "json",
        sampler=params.sampler, steps=params.steps, frames=gif,
    )  # fmt: skip
    if gif:  # [n, F, C, H, W] -> F grids of the n chains
        images = torch.stack([grid_tensor(images[:, f]) for f in range(images.shape[1])])
    chosen: dict[str, Any] = {} if label is None else {"class": job.lm.class_names[label]}
    if params.sampler is not None:
        chosen["sampler"] = params.sampler
    return await job.images(  # a chain's GIF plays from the noise to its samples, not back
        {"images": images}, False, gif_scale=2, gif_bounce=False, seed=seed,
        temperature=params.temperature, **chosen,
    )  # fmt: skip


@router.post(
    "/{name}/classify", summary="Image -> class probabilities", response_model=None, responses=json_responses(ClassifyReply),
    openapi_extra=body(ImageParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def classify(
    name: Annotated[str, Path(examples=["classifier-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """Classify an image with a classifier model."""
    job = begin(state, name, request, "classify", formats=())
    _, x = await job.one_image(ImageParams)
    probs = (await state.operations.classify(job.lm, x))[0]
    names = job.lm.class_names or [str(i) for i in range(len(probs))]
    return {
        "label": names[int(probs.argmax())],
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
        **job.meta(),
    }


@router.post(
    "/{name}/likelihood", summary="Image -> log-likelihood", response_model=None, responses=json_responses(LikelihoodReply),
    openapi_extra=body(LikelihoodParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def likelihood(
    name: Annotated[str, Path(examples=["pixelcnn-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """How likely the image is under the model: log p(x) in nats and bits/dim, whether it is
    exact, a bound (a VAE's ELBO, or its importance-weighted bound with `samples`) or an
    estimate (an RBM's, by AIS), and the convention it is on (how grey levels are read)."""
    job = begin(state, name, request, "likelihood", formats=())
    params, x = await job.one_image(LikelihoodParams)
    return {**await density.likelihood(state.operations, job.lm, x, params.samples), **job.meta()}


@router.post(
    "/{name}/anomaly", summary="Image -> anomaly score and verdict", response_model=None, responses=json_responses(AnomalyReply),
    openapi_extra=body(ImageParams, {"image": TINY_PNG}, ("image",)),
)  # fmt: skip
async def anomaly(
    name: Annotated[str, Path(examples=["pixelcnn-fashion"])], request: Request, state: State
) -> dict[str, Any]:
    """How unlike the training data the image is: `score` (higher = less like it), its
    `percentile` among held-out training-like images, and `anomalous` above
    LATENTSERVE_ANOMALY_PERCENTILE."""
    job = begin(state, name, request, "anomaly", formats=())
    _, x = await job.one_image(ImageParams)
    return {**await density.anomaly(state.operations, job.lm, x), **job.meta()}
