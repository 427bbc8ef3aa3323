"""Request parameters and reply shapes. Unknown fields are refused, not ignored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageParams(Params):
    invert: bool = Field(False, description="flip dark-on-light images (x -> 1 - x) before use")


class EncodeParams(ImageParams):
    inversion: Literal["amortised", "optimisation"] | None = Field(
        None, description="GANs: how the latent of an image is found: 'amortised' (the "
        "model's trained inverter, refined by LATENTSERVE_INVERSION_REFINE_STEPS L-BFGS evaluations; "
        "milliseconds) or 'optimisation' (LATENTSERVE_INVERSION_STEPS steps from "
        "LATENTSERVE_INVERSION_RESTARTS random starts; about a second). Default: the first "
        "of the model's `inversion` methods (GET /v1/models/{name})",
    )  # fmt: skip


class LikelihoodParams(ImageParams):
    samples: int | None = Field(
        None, description="vae, cvae: importance samples K (1: the ELBO; default "
        "LATENTSERVE_LIKELIHOOD_SAMPLES, at most LATENTSERVE_MAX_LIKELIHOOD_SAMPLES)",
    )  # fmt: skip


class DenoiseParams(ImageParams):
    noise_kind: Literal["gaussian", "salt_pepper", "mask"] | None = Field(
        None, description="corrupt the upload on the server first (to demonstrate denoising)"
    )
    noise_level: float = Field(0.3, ge=0.0, le=1.0, description="sigma, or fraction of pixels hit")
    noise_seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of the corruption")
    include_input: bool = Field(True, description="also return the (corrupted) input image")


class DecodeParams(Params):
    latent: list[float] | None = Field(None, max_length=4096, description="one latent vector")
    latents: list[list[float]] | None = Field(
        None, max_length=256, description="several latent vectors"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DecodeParams:
        if (self.latent is None) == (self.latents is None):
            raise ValueError(
                "give exactly one of 'latent' (a list of numbers) or 'latents' (a list of lists)"
            )
        if self.latents is not None and not self.latents:
            raise ValueError("'latents' is empty")
        return self


class InterpolateParams(EncodeParams):
    latent_a: list[float] | None = Field(None, max_length=4096)
    latent_b: list[float] | None = Field(None, max_length=4096)
    seed_a: int | None = Field(None, ge=0, le=2**63 - 1)
    seed_b: int | None = Field(None, ge=0, le=2**63 - 1)
    class_a: int | str | None = Field(
        None, description="class-conditional models: the class of the seed_a end (name or index)"
    )
    class_b: int | str | None = Field(
        None, description="class-conditional models: the class of the seed_b end (name or index)"
    )
    steps: int = Field(8, ge=2, description="frames, both ends included (2..LATENTSERVE_MAX_STEPS)")
    method: Literal["linear", "slerp"] = "linear"
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="prior scale for seed ends")


class ArithmeticParams(EncodeParams):
    """result = c + scale * (a - b); each term is an image (image, image_b, image_c) or a latent."""

    latent_a: list[float] | None = Field(None, max_length=4096)
    latent_b: list[float] | None = Field(None, max_length=4096)
    latent_c: list[float] | None = Field(None, max_length=4096)
    scale: float = Field(1.0, ge=-10.0, le=10.0, description="weight of the difference a - b")
    include_terms: bool = Field(
        True, description="also return a, b and c as the model decodes them (JSON formats)"
    )


class GenerateParams(Params):
    n: int = Field(8, ge=1, description="images to generate (1..LATENTSERVE_MAX_N)")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="same seed, same images; random if absent"
    )
    temperature: float = Field(
        1.0, gt=0.0, le=10.0, description="scales the prior's standard deviation"
    )
    class_: int | str | None = Field(
        None,
        alias="class",
        description="class-conditional models: the class to draw, by name or index (random if absent)",
    )
    sampler: str | None = Field(
        None, min_length=1, max_length=64,
        description="how to generate, for a model with more than one way (GET /v1/models/"
        "{name} lists its samplers, default first): a dae's 'chain' (its GSN Markov chain) "
        "or 'latent' (its fitted latent density)",
    )  # fmt: skip
    steps: int | None = Field(
        None, ge=1, description="a chain sampler's steps (LATENTSERVE_CHAIN_STEPS if absent, "
        "at most LATENTSERVE_MAX_CHAIN_STEPS)",
    )  # fmt: skip


OutputFormat = Literal["json", "array", "png", "gif"]


Projection = Literal["pca", "tsne"]


class AtlasPointsParams(Params):
    points: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        ..., min_length=1, max_length=256,
        description="points of the atlas's plane, [[x, y], ...], decoded in order",
    )  # fmt: skip
    projection: Projection = Field("pca", description="the plane the points are on")


class AtlasLocateParams(ImageParams):
    projection: Projection = Field("pca", description="the plane to place the image's code on")
