"""A typed Python client for latentserve's REST API, sync (``Client``) and async
(``AsyncClient``), over httpx.

    from latentserve.client import Client

    with Client("http://127.0.0.1:8000") as ls:
        out = ls.reconstruct("ae-fashion", "shirt.png")      # a path, bytes, PIL or NumPy
        out.pil()[0].save("shirt-ae.png")
        grid = ls.generate("gan-fashion", n=16, seed=42)    # .array: float32 [16, 1, 28, 28]
        print(ls.classify("classifier-fashion", "shirt.png").label)

Images go up as PNG files (multipart); images come back as float32 arrays ``[B, C, H, W]``
in [0, 1] (the server's ``format=array``), wrapped in ``Images`` with the reply's metadata
(seed, timing). A reply other than 2xx raises an ``ApiError`` subclass carrying the server's
``detail``; 503 (at capacity, loading, shutting down) is retried after its ``Retry-After``.

From a shell: ``python -m latentserve.client --help`` (or the ``latentserve`` command).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
from PIL import Image

T = TypeVar("T")
#: what an image argument may be: a file path, encoded bytes (PNG, JPEG, ...), a PIL image,
#: or a NumPy array (uint8 0..255 or float 0..1; [H, W], [H, W, C] or [C, H, W])
ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
DEFAULT_URL = "http://127.0.0.1:8000"


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A reply other than 2xx: ``status`` and the server's ``detail`` (what to change)."""

    def __init__(self, status: int, detail: str, response: httpx.Response | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.response = response


class BadRequest(ApiError):
    """400 or 422: a parameter, image or operation the model cannot take."""


class Unauthorized(ApiError):
    """401: an admin call without the right API key."""


class NotFound(ApiError):
    """404: no such model (the detail lists the served ones) or route."""


class NotAcceptable(ApiError):
    """406: a reply format the route does not offer."""


class PayloadTooLarge(ApiError):
    """413: the body or the image is larger than the server accepts."""


class UnsupportedMediaType(ApiError):
    """415: an image type or Content-Type the server does not decode."""


class TooManyRequests(ApiError):
    """429: this client already runs as many expensive requests as it may."""


class ServiceUnavailable(ApiError):
    """503: at capacity, loading or shutting down, after the client's retries."""


class DeadlineExceeded(ApiError):
    """504: the request's deadline passed; its work was stopped."""


class ServerError(ApiError):
    """500 and any other status: the server logged the details."""


ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest, 422: BadRequest, 401: Unauthorized, 404: NotFound, 406: NotAcceptable,
    413: PayloadTooLarge, 415: UnsupportedMediaType, 429: TooManyRequests,
    503: ServiceUnavailable, 504: DeadlineExceeded,
}  # fmt: skip


def raise_for_reply(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        detail = body.get("detail", body.get("error", response.text))
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise ERRORS.get(response.status_code, ServerError)(response.status_code, str(detail), response)


# --- results ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Images:
    """Images as the server made them: ``array`` float32 [B, C, H, W] in [0, 1]; ``meta``
    the rest of the reply (model, seed, temperature, timing_ms, ...); ``extra`` other image
    batches of the reply by name (denoise's ``input``, arithmetic's ``a``/``b``/``c``)."""

    array: np.ndarray
    meta: dict[str, Any]
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def seed(self) -> int | None:
        return self.meta.get("seed")

    def pixels(self) -> np.ndarray:
        """uint8 [B, H, W, C]."""
        return to_pixels(self.array)

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in self.pixels()]

    def save(self, path: str | os.PathLike[str], columns: int = 8) -> Path:
        """One image as it is, several as a grid; a ``.gif`` path plays them as frames."""
        path = Path(path)
        frames = self.pil()
        if path.suffix.lower() == ".gif" and len(frames) > 1:
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        elif len(frames) == 1:
            frames[0].save(path)
        else:
            Image.fromarray(grid(self.pixels(), columns)).save(path)
        return path


@dataclasses.dataclass
class Encoding:
    """latent [K]; a VAE's posterior ``mean``/``log_var``; a GAN search's error."""

    latent: np.ndarray
    mean: np.ndarray | None
    log_var: np.ndarray | None
    reconstruction_error: float | None
    meta: dict[str, Any]


@dataclasses.dataclass
class Classification:
    label: str
    probabilities: dict[str, float]
    meta: dict[str, Any]


@dataclasses.dataclass
class Likelihood:
    """log p(x) in nats and bits/dim, what kind of number it is, on which convention."""

    log_likelihood_nats: float
    bits_per_dim: float
    exact: bool
    kind: str
    convention: str
    samples: int | None
    meta: dict[str, Any]

    @classmethod
    def from_reply(cls, body: dict[str, Any]) -> Likelihood:
        fields = ("log_likelihood_nats", "bits_per_dim", "exact", "kind", "convention")
        meta = {k: v for k, v in body.items() if k not in (*fields, "samples")}
        nats, bpd, exact, kind, convention = (body[f] for f in fields)
        return cls(nats, bpd, exact, kind, convention, body.get("samples"), meta)


@dataclasses.dataclass
class Anomaly:
    score: float
    percentile: float
    anomalous: bool
    threshold_percentile: float
    method: str
    likelihood: Likelihood
    meta: dict[str, Any]


@dataclasses.dataclass
class AtlasMap:
    """Where sampled test images live in the model's code, on a 2-D plane: ``points`` [N, 2],
    ``labels`` [N] (indices into ``class_names``), ``bounds`` {"x": [lo, hi], "y": [lo, hi]}."""

    projection: str
    points: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    bounds: dict[str, list[float]]
    raw: dict[str, Any]  # the whole reply (inverse, source, thumbnails, ...)


@dataclasses.dataclass
class AtlasLocation:
    """An image's point on the atlas, its code, and its nearest neighbours' classes."""

    point: np.ndarray
    latent: np.ndarray
    neighbour_classes: dict[str, int]
    meta: dict[str, Any]


@dataclasses.dataclass
class ModelInfo:
    name: str
    family: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    operations: list[str]
    class_names: list[str]
    conditional: bool
    raw: dict[str, Any]  # the whole description (metrics, density, atlas, ...)

    @classmethod
    def from_reply(cls, body: dict[str, Any]) -> ModelInfo:
        return cls(body["name"], body["family"], tuple(body["image_shape"]), body["latent_dim"],
                   body["operations"], body["class_names"], body["conditional"], body)  # fmt: skip


# --- images in and out -----------------------------------------------------------------------


def image_bytes(image: ImageInput) -> bytes:
    """Any accepted image argument -> encoded bytes to upload (PNG for PIL and NumPy)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(array_to_pixels(image))
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"an image is a path, bytes, a PIL image or a NumPy array, not {type(image).__name__}")  # fmt: skip


def array_to_pixels(array: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 1] arrays [H, W], [H, W, C] or [C, H, W] -> uint8 [H, W(, C)]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # channels first -> last
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"an image array is [H, W], [H, W, C] or [C, H, W] with C = 1 or 3, got {a.shape}")  # fmt: skip
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind not in "fiu" or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError("a non-uint8 image array must hold finite values in [0, 1]")
    return np.round(a * 255).astype(np.uint8)


def to_pixels(array: np.ndarray) -> np.ndarray:
    """float [B, C, H, W] in [0, 1] -> uint8 [B, H, W, C]."""
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def grid(pixels: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 [B, H, W, C] -> one uint8 image of the batch in rows of ``columns``."""
    b, h, w, c = pixels.shape
    cols = min(columns, b)
    rows = -(-b // cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i, p in enumerate(pixels):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = p  # fmt: skip
    return out[..., 0] if c == 1 else out


# --- the calls, shared by Client and AsyncClient ---------------------------------------------


@dataclasses.dataclass
class Call(Generic[T]):
    """One HTTP request and how to read its reply."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None


def _meta(body: dict[str, Any], *taken: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in {*taken, "shape", "count"}}


def _images(main: str, *others: str) -> Callable[[httpx.Response], Images]:
    def parse(response: httpx.Response) -> Images:
        body = response.json()
        array = np.asarray(body[main], dtype=np.float32)
        extra = {k: np.asarray(body[k], np.float32) for k in others if k in body}
        if array.ndim == 3:  # one image
            array = array[None]
            extra = {k: v[None] for k, v in extra.items()}
        return Images(array, _meta(body, main, *others), extra)

    return parse


def _form(images: dict[str, ImageInput], fields: dict[str, Any]) -> dict[str, Any]:
    """Images as multipart files, other parameters as text fields (lists as JSON); without
    images, a JSON body."""
    if not images:
        return {"json": {k: v for k, v in fields.items() if v is not None}}
    files = {k: (f"{k}.png", image_bytes(v), "application/octet-stream") for k, v in images.items()}
    data = {}
    for key, value in fields.items():
        if value is None:
            continue
        data[key] = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)  # fmt: skip
    return {"files": files, "data": data}


def _op(model: str, operation: str) -> str:
    return f"/v1/models/{model}/{operation}"


def _latents(latents: Any) -> list[list[float]]:
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2:
        raise ValueError(f"latents are one vector [K] or several [N, K], got shape {z.shape}")
    return z.tolist()


def _latent(latent: Any) -> list[float] | None:
    return None if latent is None else np.asarray(latent, dtype=np.float64).reshape(-1).tolist()


class Calls:
    """What each method sends and how it reads the reply; the clients only send them."""

    @staticmethod
    def models() -> Call[list[ModelInfo]]:
        return Call("GET", "/v1/models", lambda r: [ModelInfo.from_reply(m) for m in r.json()["models"]])  # fmt: skip

    @staticmethod
    def model(name: str) -> Call[ModelInfo]:
        return Call("GET", f"/v1/models/{name}", lambda r: ModelInfo.from_reply(r.json()))

    @staticmethod
    def ready() -> Call[bool]:
        return Call("GET", "/health/ready", lambda r: bool(r.json().get("ready")))

    @staticmethod
    def encode(
        model: str, image: ImageInput, invert: bool = False, inversion: str | None = None
    ) -> Call[Encoding]:
        def parse(r: httpx.Response) -> Encoding:
            b = r.json()
            opt = {k: np.asarray(b[k], np.float32) if k in b else None for k in ("mean", "log_var")}
            return Encoding(np.asarray(b["latent"], np.float32), opt["mean"], opt["log_var"],
                            b.get("reconstruction_error"),
                            _meta(b, "latent", "mean", "log_var", "reconstruction_error"))  # fmt: skip

        fields = {"invert": invert, "inversion": inversion}
        return Call("POST", _op(model, "encode"), parse, **_form({"image": image}, fields))

    @staticmethod
    def decode(model: str, latents: Any) -> Call[Images]:
        return Call("POST", _op(model, "decode"), _images("images"), {"format": "array"},
                    json={"latents": _latents(latents)})  # fmt: skip

    @staticmethod
    def reconstruct(
        model: str, image: ImageInput, invert: bool = False, inversion: str | None = None
    ) -> Call[Images]:
        return Call("POST", _op(model, "reconstruct"), _images("image"), {"format": "array"},
                    **_form({"image": image}, {"invert": invert, "inversion": inversion}))  # fmt: skip

    @staticmethod
    def denoise(
        model: str, image: ImageInput, noise: str | None = None, level: float = 0.3,
        noise_seed: int | None = None, invert: bool = False,
    ) -> Call[Images]:  # fmt: skip
        fields: dict[str, Any] = {"invert": invert}
        if noise is not None:
            fields["noise"] = {"kind": noise, "level": level, **({"seed": noise_seed} if noise_seed is not None else {})}  # fmt: skip
        return Call("POST", _op(model, "denoise"), _images("image", "input"), {"format": "array"},
                    **_form({"image": image}, fields))  # fmt: skip

    @staticmethod
    def generate(
        model: str, n: int = 8, seed: int | None = None, temperature: float = 1.0,
        class_: int | str | None = None, sampler: str | None = None, steps: int | None = None,
    ) -> Call[Images]:  # fmt: skip
        body: dict[str, Any] = {"n": n, "temperature": temperature}
        optional = {"seed": seed, "class": class_, "sampler": sampler, "steps": steps}
        body.update({k: v for k, v in optional.items() if v is not None})
        return Call("POST", _op(model, "generate"), _images("images"), {"format": "array"}, json=body)  # fmt: skip

    @staticmethod
    def interpolate(
        model: str, a: ImageInput | None = None, b: ImageInput | None = None, *,
        latent_a: Any = None, latent_b: Any = None, seed_a: int | None = None,
        seed_b: int | None = None, steps: int = 8, method: str = "linear",
    ) -> Call[Images]:  # fmt: skip
        fields = {"latent_a": _latent(latent_a), "latent_b": _latent(latent_b), "seed_a": seed_a,
                  "seed_b": seed_b, "steps": steps, "method": method}  # fmt: skip
        images = {k: v for k, v in {"image": a, "image_b": b}.items() if v is not None}
        return Call("POST", _op(model, "interpolate"), _images("frames"), {"format": "array"},
                    **_form(images, fields))  # fmt: skip

    @staticmethod
    def arithmetic(
        model: str, a: ImageInput | None = None, b: ImageInput | None = None,
        c: ImageInput | None = None, *, latent_a: Any = None, latent_b: Any = None,
        latent_c: Any = None, scale: float = 1.0,
    ) -> Call[Images]:  # fmt: skip
        fields = {"latent_a": _latent(latent_a), "latent_b": _latent(latent_b),
                  "latent_c": _latent(latent_c), "scale": scale}  # fmt: skip
        images = {k: v for k, v in {"image": a, "image_b": b, "image_c": c}.items() if v is not None}  # fmt: skip
        return Call("POST", _op(model, "arithmetic"), _images("image", "a", "b", "c"),
                    {"format": "array"}, **_form(images, fields))  # fmt: skip

    @staticmethod
    def classify(model: str, image: ImageInput, invert: bool = False) -> Call[Classification]:
        def parse(r: httpx.Response) -> Classification:
            b = r.json()
            return Classification(b["label"], b["probabilities"], _meta(b, "label", "probabilities"))  # fmt: skip

        return Call("POST", _op(model, "classify"), parse, **_form({"image": image}, {"invert": invert}))  # fmt: skip

    @staticmethod
    def likelihood(model: str, image: ImageInput, samples: int | None = None) -> Call[Likelihood]:
        return Call("POST", _op(model, "likelihood"), lambda r: Likelihood.from_reply(r.json()),
                    **_form({"image": image}, {"samples": samples}))  # fmt: skip

    @staticmethod
    def anomaly(model: str, image: ImageInput) -> Call[Anomaly]:
        def parse(r: httpx.Response) -> Anomaly:
            b = r.json()
            fields = ("score", "percentile", "anomalous", "threshold_percentile", "method")
            score, percentile, anomalous, threshold, method = (b[f] for f in fields)
            return Anomaly(score, percentile, anomalous, threshold, method,
                           Likelihood.from_reply(b["likelihood"]), _meta(b, *fields, "likelihood"))  # fmt: skip

        return Call("POST", _op(model, "anomaly"), parse, **_form({"image": image}, {}))


def _atlas_map(r: httpx.Response) -> AtlasMap:
    b = r.json()
    return AtlasMap(b["projection"], np.asarray(b["points"], np.float32), np.asarray(b["labels"]),
                    b["class_names"], b["bounds"], b)  # fmt: skip


def _atlas_location(r: httpx.Response) -> AtlasLocation:
    b = r.json()
    return AtlasLocation(np.asarray(b["point"], np.float32), np.asarray(b["latent"], np.float32),
                         b["neighbour_classes"], _meta(b, "point", "latent", "neighbour_classes"))  # fmt: skip


class AtlasCalls:
    @staticmethod
    def atlas(model: str, projection: str = "pca") -> Call[AtlasMap]:
        return Call("GET", _op(model, "atlas"), _atlas_map, {"projection": projection})

    @staticmethod
    def atlas_decode(model: str, points: Any, projection: str = "pca") -> Call[Images]:
        xy = np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist()
        return Call("POST", _op(model, "atlas/decode"), _images("images"), {"format": "array"},
                    json={"points": xy, "projection": projection})  # fmt: skip

    @staticmethod
    def atlas_locate(model: str, image: ImageInput, projection: str = "pca") -> Call[AtlasLocation]:
        return Call("POST", _op(model, "atlas/locate"), _atlas_location,
                    **_form({"image": image}, {"projection": projection}))  # fmt: skip


class _Base:
    def __init__(
        self, base_url: str, timeout: float, retries: int, max_retry_wait_s: float,
        deadline_s: float | None,
    ) -> None:  # fmt: skip
        if retries < 0:
            raise ValueError(f"retries: 0 or more, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.headers = {"X-Request-Timeout": f"{deadline_s:g}"} if deadline_s is not None else {}

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        return {"params": call.params, "json": call.json, "files": call.files, "data": call.data}

    def _wait_s(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if response.status_code != 503 or attempt >= self.retries:
            return None
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.0), self.max_retry_wait_s)


class Client(_Base):
    """The synchronous client. Use it as a context manager, or call ``close()``.

    ``retries``: how often a 503 is retried (after its Retry-After, at most
    ``max_retry_wait_s``); ``deadline_s``: sent as X-Request-Timeout on every call."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, retries: int = 3,
        max_retry_wait_s: float = 10.0, deadline_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        super().__init__(base_url, timeout, retries, max_retry_wait_s, deadline_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self.headers,
                                  transport=transport)  # fmt: skip

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[T]) -> T:
        for attempt in range(self.retries + 1):
            response = self._http.request(call.method, call.path, **self._request_args(call))
            wait = self._wait_s(response, attempt)
            if wait is None:
                break
            time.sleep(wait)
        raise_for_reply(response)
        return call.parse(response)

    def models(self) -> list[ModelInfo]:
        return self.run(Calls.models())

    def model(self, name: str) -> ModelInfo:
        return self.run(Calls.model(name))

    def ready(self) -> bool:
        """True once every configured model serves (the readiness probe)."""
        try:
            return self.run(Calls.ready())
        except ServiceUnavailable:
            return False

    def encode(
        self, model: str, image: ImageInput, *, invert: bool = False, inversion: str | None = None
    ) -> Encoding:
        """The code; a GAN's by its ``inversion`` ("amortised", "optimisation"; default: the
        model's first), named in ``meta["inversion"]``."""
        return self.run(Calls.encode(model, image, invert, inversion))

    def decode(self, model: str, latents: Any) -> Images:
        """One latent [K] or several [N, K] (lists or arrays) -> N images."""
        return self.run(Calls.decode(model, latents))

    def reconstruct(
        self, model: str, image: ImageInput, *, invert: bool = False, inversion: str | None = None
    ) -> Images:
        return self.run(Calls.reconstruct(model, image, invert, inversion))

    def denoise(
        self, model: str, image: ImageInput, *, noise: str | None = None, level: float = 0.3,
        noise_seed: int | None = None, invert: bool = False,
    ) -> Images:  # fmt: skip
        """The denoised image; with ``noise`` ("gaussian", "salt_pepper", "mask") the server
        corrupts the upload first, and ``extra["input"]`` is the corrupted image."""
        return self.run(Calls.denoise(model, image, noise, level, noise_seed, invert))

    def generate(
        self, model: str, n: int = 8, *, seed: int | None = None, temperature: float = 1.0,
        class_: int | str | None = None, sampler: str | None = None, steps: int | None = None,
    ) -> Images:  # fmt: skip
        """n images; ``sampler`` and ``steps`` for a model with more than one way (a dae's
        GSN ``chain``)."""
        return self.run(Calls.generate(model, n, seed, temperature, class_, sampler, steps))

    def interpolate(
        self, model: str, a: ImageInput | None = None, b: ImageInput | None = None, *,
        latent_a: Any = None, latent_b: Any = None, seed_a: int | None = None,
        seed_b: int | None = None, steps: int = 8, method: str = "linear",
    ) -> Images:  # fmt: skip
        """Frames between two images, two latents or two seeds."""
        return self.run(Calls.interpolate(model, a, b, latent_a=latent_a, latent_b=latent_b, seed_a=seed_a,
                                          seed_b=seed_b, steps=steps, method=method))  # fmt: skip

    def arithmetic(
        self, model: str, a: ImageInput | None = None, b: ImageInput | None = None,
        c: ImageInput | None = None, *, latent_a: Any = None, latent_b: Any = None,
        latent_c: Any = None, scale: float = 1.0,
    ) -> Images:  # fmt: skip
        """c + scale * (a - b), decoded; ``meta["latent"]`` is the result's code."""
        return self.run(Calls.arithmetic(model, a, b, c, latent_a=latent_a, latent_b=latent_b,
                                         latent_c=latent_c, scale=scale))  # fmt: skip

    def classify(self, model: str, image: ImageInput, *, invert: bool = False) -> Classification:
        return self.run(Calls.classify(model, image, invert))

    def likelihood(self, model: str, image: ImageInput, *, samples: int | None = None) -> Likelihood:  # fmt: skip
        return self.run(Calls.likelihood(model, image, samples))

    def anomaly(self, model: str, image: ImageInput) -> Anomaly:
        return self.run(Calls.anomaly(model, image))

    def atlas(self, model: str, projection: str = "pca") -> AtlasMap:
        """The latent-space map (``pca`` or ``tsne``) of a sample of test images."""
        return self.run(AtlasCalls.atlas(model, projection))

    def atlas_decode(self, model: str, points: Any, projection: str = "pca") -> Images:
        """Points of the atlas's plane [[x, y], ...] -> one image each."""
        return self.run(AtlasCalls.atlas_decode(model, points, projection))

    def atlas_locate(self, model: str, image: ImageInput, projection: str = "pca") -> AtlasLocation:  # fmt: skip
        return self.run(AtlasCalls.atlas_locate(model, image, projection))


class AsyncClient(_Base):
    """The asyncio client: the same methods as ``Client``, awaited."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, retries: int = 3,
        max_retry_wait_s: float = 10.0, deadline_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        super().__init__(base_url, timeout, retries, max_retry_wait_s, deadline_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers=self.headers, transport=transport)  # fmt: skip

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def run(self, call: Call[T]) -> T:
        for attempt in range(self.retries + 1):
            response = await self._http.request(call.method, call.path, **self._request_args(call))
            wait = self._wait_s(response, attempt)
            if wait is None:
                break
            await asyncio.sleep(wait)
        raise_for_reply(response)
        return call.parse(response)

    async def models(self) -> list[ModelInfo]:
        return await self.run(Calls.models())

    async def model(self, name: str) -> ModelInfo:
        return await self.run(Calls.model(name))

    async def ready(self) -> bool:
        try:
            return await self.run(Calls.ready())
        except ServiceUnavailable:
            return False

    async def encode(
        self, model: str, image: ImageInput, *, invert: bool = False, inversion: str | None = None
    ) -> Encoding:
        return await self.run(Calls.encode(model, image, invert, inversion))

    async def decode(self, model: str, latents: Any) -> Images:
        return await self.run(Calls.decode(model, latents))

    async def reconstruct(
        self, model: str, image: ImageInput, *, invert: bool = False, inversion: str | None = None
    ) -> Images:
        return await self.run(Calls.reconstruct(model, image, invert, inversion))

    async def denoise(
        self, model: str, image: ImageInput, *, noise: str | None = None, level: float = 0.3,
        noise_seed: int | None = None, invert: bool = False,
    ) -> Images:  # fmt: skip
        return await self.run(Calls.denoise(model, image, noise, level, noise_seed, invert))

    async def generate(
        self, model: str, n: int = 8, *, seed: int | None = None, temperature: float = 1.0,
        class_: int | str | None = None, sampler: str | None = None, steps: int | None = None,
    ) -> Images:  # fmt: skip
        """n images; ``sampler`` and ``steps`` for a model with more than one way (a dae's
        GSN ``chain``)."""
        return await self.run(Calls.generate(model, n, seed, temperature, class_, sampler, steps))

    async def interpolate(
        self, model: str, a: ImageInput | None = None, b: ImageInput | None = None, *,
        latent_a: Any = None, latent_b: Any = None, seed_a: int | None = None,
        seed_b: int | None = None, steps: int = 8, method: str = "linear",
    ) -> Images:  # fmt: skip
        return await self.run(Calls.interpolate(model, a, b, latent_a=latent_a, latent_b=latent_b, seed_a=seed_a,
                                                seed_b=seed_b, steps=steps, method=method))  # fmt: skip

    async def arithmetic(
        self, model: str, a: ImageInput | None = None, b: ImageInput | None = None,
        c: ImageInput | None = None, *, latent_a: Any = None, latent_b: Any = None,
        latent_c: Any = None, scale: float = 1.0,
    ) -> Images:  # fmt: skip
        return await self.run(Calls.arithmetic(model, a, b, c, latent_a=latent_a, latent_b=latent_b,
                                               latent_c=latent_c, scale=scale))  # fmt: skip

    async def classify(self, model: str, image: ImageInput, *, invert: bool = False) -> Classification:  # fmt: skip
        return await self.run(Calls.classify(model, image, invert))

    async def likelihood(self, model: str, image: ImageInput, *, samples: int | None = None) -> Likelihood:  # fmt: skip
        return await self.run(Calls.likelihood(model, image, samples))

    async def anomaly(self, model: str, image: ImageInput) -> Anomaly:
        return await self.run(Calls.anomaly(model, image))

    async def atlas(self, model: str, projection: str = "pca") -> AtlasMap:
        return await self.run(AtlasCalls.atlas(model, projection))

    async def atlas_decode(self, model: str, points: Any, projection: str = "pca") -> Images:
        return await self.run(AtlasCalls.atlas_decode(model, points, projection))

    async def atlas_locate(self, model: str, image: ImageInput, projection: str = "pca") -> AtlasLocation:  # fmt: skip
        return await self.run(AtlasCalls.atlas_locate(model, image, projection))


# --- the command line ------------------------------------------------------------------------


def _print(value: Any) -> None:
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.name != "raw"}  # fmt: skip
        return v

    print(json.dumps(plain(value), indent=2))


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a latent is numbers separated by commas, got {text[:40]!r}") from None  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latentserve.client",
                                description="Call a latentserve service from the shell.")  # fmt: skip
    p.add_argument("--url", default=os.environ.get("LATENTSERVE_URL", DEFAULT_URL),
                   help="the service (default: $LATENTSERVE_URL or %(default)s)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the served models")
    sub.add_parser("describe", help="describe one model").add_argument("model")

    def command(name: str, help: str, image: bool = True, out: bool = True) -> argparse.ArgumentParser:  # fmt: skip
        c = sub.add_parser(name, help=help)
        c.add_argument("model")
        if image:
            c.add_argument("image", type=Path, help="an image file")
        if out:
            c.add_argument("-o", "--out", type=Path, required=True, help="where to write the image(s): .png, or .gif for frames")  # fmt: skip
        return c

    command("encode", "image -> latent (printed as JSON)", out=False)
    command("decode", "latent -> image", image=False).add_argument("--latent", type=_floats, required=True)  # fmt: skip
    command("reconstruct", "image -> image through the code")
    d = command("denoise", "noisy image -> clean image")
    d.add_argument("--noise", choices=["gaussian", "salt_pepper", "mask"])
    d.add_argument("--level", type=float, default=0.3)
    g = command("generate", "sample images", image=False)
    g.add_argument("-n", "--n", type=int, default=16)
    g.add_argument("--seed", type=int)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--class", dest="class_", help="conditional models: a class name or index")
    g.add_argument("--sampler", help="a model with more than one way: e.g. a dae's chain")
    g.add_argument("--steps", type=int, help="a chain sampler's steps")
    i = command("interpolate", "frames between two images or two seeds", image=False)
    i.add_argument("--images", nargs=2, type=Path, metavar=("A", "B"))
    i.add_argument("--seeds", nargs=2, type=int, metavar=("A", "B"))
    i.add_argument("--steps", type=int, default=8)
    i.add_argument("--method", choices=["linear", "slerp"], default="linear")
    for name, help in [("classify", "image -> class"), ("likelihood", "image -> log p(x)"),
                       ("anomaly", "image -> anomaly score")]:  # fmt: skip
        command(name, help, out=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.url, timeout=args.timeout) as ls:
            result: Any
            match args.command:
                case "models":
                    result = [m.name for m in ls.models()]
                case "describe":
                    result = ls.model(args.model).raw
                case "encode" | "classify" | "likelihood" | "anomaly":
                    result = getattr(ls, args.command)(args.model, args.image)
                case "decode":
                    result = ls.decode(args.model, args.latent)
                case "reconstruct":
                    result = ls.reconstruct(args.model, args.image)
                case "denoise":
                    result = ls.denoise(args.model, args.image, noise=args.noise, level=args.level)
                case "generate":
                    result = ls.generate(args.model, args.n, seed=args.seed, temperature=args.temperature,
                                         class_=args.class_, sampler=args.sampler, steps=args.steps)  # fmt: skip
                case "interpolate":
                    if (args.images is None) == (args.seeds is None):
                        raise SystemExit("interpolate: give --images A B or --seeds A B")
                    a, b = args.images or (None, None)
                    sa, sb = args.seeds or (None, None)
                    result = ls.interpolate(args.model, a, b, seed_a=sa, seed_b=sb, steps=args.steps, method=args.method)  # fmt: skip
    except ApiError as exc:
        print(f"error {exc.status}: {exc.detail}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Images):
        path = result.save(args.out)
        print(f"{path} ({len(result)} image{'s' * (len(result) != 1)}; " + ", ".join(
            f"{k}={v}" for k, v in result.meta.items() if k in ("model", "seed", "timing_ms")) + ")")  # fmt: skip
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
