"""The operations, as calls into the batching engine. Routes call these and nothing else.

Everything random (latent draws for generate, corruption for denoise) happens here, on the
request path and per request, from the request's own seed: batching never changes which
images a seed gives.
"""

from __future__ import annotations

import logging
import math
import secrets
import weakref
from collections.abc import Hashable, Iterable
from functools import partial

import torch
from fastapi import HTTPException

from models import corrupt
from models.classifier import Classifier
from models.conditioning import ConditionalCode
from models.gan import GAN
from models.imaging import to_pixels
from models.inversion import invert
from models.vae import VAE

from .batching import BatchEngine, BatchFn, Output
from .config import Settings
from .registry import LoadedModel
from .tracing import TracedCall

log = logging.getLogger("latentserve.inference")


def new_seed() -> int:
    return secrets.randbits(63)


def check_latents(lm: LoadedModel, rows: list[list[float]], field: str) -> torch.Tensor:
    """List of latent vectors -> tensor [B, latent_dim]; the length and finiteness are checked."""
    k = lm.model.latent_dim
    for i, row in enumerate(rows):
        if len(row) != k:
            where = field if len(rows) == 1 else f"{field}[{i}]"
            raise HTTPException(
                422, f"{where}: {lm.name} takes latents of length {k}, got {len(row)}"
            )
    z = torch.tensor(rows, dtype=torch.float32)
    if not torch.isfinite(z).all() or z.abs().max() > 1e4:
        raise HTTPException(
            422, f"{field}: values must be finite numbers of magnitude at most 10000"
        )
    return z


def class_index(lm: LoadedModel, value: int | str | None, field: str) -> int | None:
    """A class given by name or index -> its index; None stays None (a random class)."""
    if value is None:
        return None
    if not isinstance(lm.model, ConditionalCode):
        raise HTTPException(
            400, f"{field}: model {lm.name!r} is not class-conditional; leave {field} out"
        )
    names = lm.class_names
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise HTTPException(
                422,
                f"{field}: index {value} is out of range; {lm.name} has classes 0..{len(names) - 1}",
            )
        return value
    if value not in names:
        raise HTTPException(
            422,
            f"{field}: {value!r} is not a class of {lm.name}; choose one of: {', '.join(names)}",
        )
    return names.index(value)


def interpolation_path(za: torch.Tensor, zb: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """[K], [K] -> [steps, K]. slerp follows the great circle (Shoemake 1985; White 2016,
    "Sampling Generative Networks"), which keeps Gaussian latents at a typical norm."""
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # [steps, 1]
    if method == "slerp":
        a, b = za / za.norm().clamp_min(1e-8), zb / zb.norm().clamp_min(1e-8)
        omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
        if float(omega) > 1e-4:
            so = torch.sin(omega)
            return (torch.sin((1 - t) * omega) / so) * za + (torch.sin(t * omega) / so) * zb
    return (1 - t) * za + t * zb


class Operations:
    def __init__(self, engine: BatchEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # each served model's calls, traced on first use (tracing.py); a reload makes a
        # new LoadedModel, and the old one's traces go with it
        self._calls: weakref.WeakKeyDictionary[LoadedModel, dict[str, TracedCall]] = (
            weakref.WeakKeyDictionary()
        )

    def call(self, lm: LoadedModel, method: str) -> TracedCall:
        """``lm.model.<method>`` for the inference thread: a checked trace once it is made."""
        calls = self._calls.get(lm)
        if calls is None:
            calls = self._calls[lm] = {}
        fn = calls.get(method)
        if fn is None:
            label = f"{lm.name}.{method}"
            fn = calls[method] = TracedCall(lm.model, method, label, self.settings.torchscript)
        return fn

    async def warm_up(self, models: Iterable[LoadedModel]) -> int:
        """Run one small batch of each model's traceable calls, so that their traces exist
        before the first requests need them (tracing takes ~0.1-0.5 s per call, and ~5-10
        MB each: LATENTSERVE_TRACE_AT_START). Returns how many calls are now traced. The
        batches queue like requests: traffic that arrives meanwhile waits behind at most
        one of them."""
        if not self.settings.torchscript:
            return 0
        traced = 0
        g = torch.Generator().manual_seed(0)
        for lm in models:
            model = lm.model
            image = torch.rand(1, *model.image_shape, generator=g)
            latent = torch.randn(1, model.latent_dim, generator=g)
            calls: list[tuple[Hashable, str, torch.Tensor]] = []
            if "encode" in model.operations:
                method = "encode_distribution" if isinstance(model, VAE) else "encode"
                calls.append(((lm, "encode"), method, image))
            if "decode" in model.operations:
                calls.append(((lm, "decode", False), "decode", latent))
            if "reconstruct" in model.operations:
                calls.append(((lm, "reconstruct", False), "reconstruct", image))
            if "classify" in model.operations:
                calls.append(((lm, "classify"), "classify", image))
            for key, method, x in calls:
                call = self.call(lm, method)
                try:
                    await self.engine.run(key, call, x)
                except Exception as exc:  # the model's requests will say it; keep warming
                    log.warning("warming up %s.%s failed: %s", lm.name, method, exc)
                traced += call.state == "traced"
        return traced

    def images_call(self, lm: LoadedModel, method: str, pixels: bool) -> BatchFn:
        """The call for a method that returns images; with ``pixels``, as uint8 [n, H, W, C].

        The conversion runs once per batch on the inference thread: per request on the
        event loop, its six small array operations were ~5% of the loop's time.
        """
        call = self.call(lm, method)
        return partial(_as_pixels, call) if pixels else call

    async def encode(self, lm: LoadedModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = lm.model
        if isinstance(model, GAN):
            z, error = await self.engine.run((lm, "invert"), partial(self.invert, model), x)
            return {"latent": z, "reconstruction_error": error}
        if isinstance(model, VAE):
            mu, log_var = await self.engine.run(
                (lm, "encode"), self.call(lm, "encode_distribution"), x
            )
            return {"latent": mu, "mean": mu, "log_var": log_var}
        z = await self.engine.run((lm, "encode"), self.call(lm, "encode"), x)
        assert isinstance(z, torch.Tensor)
        return {"latent": z}

    async def decode(self, lm: LoadedModel, z: torch.Tensor, pixels: bool = False) -> torch.Tensor:
        """Images float [n, C, H, W] in [0, 1], or with ``pixels`` uint8 [n, H, W, C]."""
        fn = self.images_call(lm, "decode", pixels)
        out = await self.engine.run((lm, "decode", pixels), fn, z)
        assert isinstance(out, torch.Tensor)
        return out

    def invert(self, gan: GAN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs on the inference thread. Seeded: the same image gives the same latent whenever
        the inversion runs all its steps within the time budget."""
        s = self.settings
        return invert(gan, x, s.inversion_steps, s.inversion_restarts,
                      time_budget_s=s.inversion_time_budget_s, generator=torch.Generator().manual_seed(0))  # fmt: skip

    async def reconstruct(
        self, lm: LoadedModel, x: torch.Tensor, pixels: bool = False
    ) -> torch.Tensor:
        """Like ``decode``: float images, or with ``pixels`` uint8 [n, H, W, C]."""
        if "reconstruct" not in lm.model.operations:  # a GAN: invert, then decode
            return await self.decode(lm, (await self.encode(lm, x))["latent"], pixels)
        fn = self.images_call(lm, "reconstruct", pixels)
        out = await self.engine.run((lm, "reconstruct", pixels), fn, x)
        assert isinstance(out, torch.Tensor)
        return out

    async def classify(self, lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        model = lm.model
        assert isinstance(model, Classifier)
        out = await self.engine.run((lm, "classify"), self.call(lm, "classify"), x)
        assert isinstance(out, torch.Tensor)
        return out

    def corrupt(self, x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
        return corrupt(x, kind, level, torch.Generator().manual_seed(seed))

    def prior_latents(
        self, lm: LoadedModel, n: int, seed: int, temperature: float, label: int | None = None
    ) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if label is None:
            return lm.model.sample_latent(n, g, temperature)
        model = lm.model
        assert isinstance(model, ConditionalCode)
        return model.sample_latent(n, g, temperature, torch.full((n,), label, dtype=torch.long))

    async def generate(
        self,
        lm: LoadedModel,
        n: int,
        seed: int,
        temperature: float,
        label: int | None = None,
        pixels: bool = False,
    ) -> torch.Tensor:
        return await self.decode(lm, self.prior_latents(lm, n, seed, temperature, label), pixels)

    async def interpolate(
        self, lm: LoadedModel, za: torch.Tensor, zb: torch.Tensor, steps: int, method: str
    ) -> torch.Tensor:
        path = interpolation_path(za, zb, steps, method)
        if not torch.isfinite(path).all() or not math.isfinite(float(path.abs().max())):
            raise HTTPException(422, "the interpolation path is not finite")
        return await self.decode(lm, path)


def _as_pixels(call: BatchFn, x: torch.Tensor) -> Output:
    out = call(x)
    assert isinstance(out, torch.Tensor)
    return to_pixels(out)
