"""The JSON replies, described for OpenAPI (and so for generated clients): one model per
reply shape. The routes build their replies as dicts (the operation routes skip FastAPI's
serializer, dispatch.py); these models document them, and schemathesis's
``response_schema_conformance`` (tests/test_fuzz.py) checks that every reply keeps to them.
Replies may carry more fields than listed (additionalProperties stays open)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

#: one image in a JSON reply: a PNG data URL, or with ?format=array nested floats [C][H][W]
ImageValue = str | list[Any]


class ErrorReply(BaseModel):
    detail: str = Field(description="what went wrong and what to change")


class ModelDescription(BaseModel):
    name: str
    family: str
    image_shape: list[int] = Field(description="[C, H, W]")
    latent_dim: int
    operations: list[str]
    inversion: list[str] = Field(
        description="how encode searches for a code (GANs: amortised, optimisation), default first"
    )
    samplers: list[str] = Field(
        description="the ways generate can sample (its sampler parameter), default first; "
        "empty for a model with one way"
    )
    chain_samplers: list[str] = Field(
        description="those of its samplers that run a Markov chain: they take steps and "
        "animate as a GIF (format=gif)"
    )
    parameters: int
    class_names: list[str]
    conditional: bool
    latent_prior: str | None
    density: dict[str, Any] | None
    metrics: dict[str, Any]
    dataset: str | None
    atlas: dict[str, Any] | None


class ModelList(BaseModel):
    models: list[ModelDescription]


class LiveReply(BaseModel):
    status: str
    live: bool


class ReadyReply(BaseModel):
    status: str
    ready: bool
    models: list[str]
    not_ready: dict[str, str]
    plugins_failed: dict[str, str]


class Timed(BaseModel):
    model: str
    timing_ms: float


class EncodeReply(Timed):
    latent: list[float]
    latent_dim: int
    mean: list[float] | None = Field(None, description="a VAE's posterior mean")
    log_var: list[float] | None = Field(None, description="a VAE's posterior log-variance")
    reconstruction_error: float | None = Field(None, description="a GAN search's error")
    inversion: str | None = Field(None, description="the search's method (GANs)")


class ImagesReply(Timed):
    shape: list[int] = Field(description="[C, H, W] of each image")
    count: int


class DecodeReply(ImagesReply):
    images: list[ImageValue]


class ReconstructReply(ImagesReply):
    image: ImageValue


class DenoiseReply(ImagesReply):
    image: ImageValue
    input: ImageValue | None = Field(None, description="the (corrupted) input")
    noise_kind: str | None = None
    noise_level: float | None = None
    noise_seed: int | None = None


class InterpolateReply(ImagesReply):
    frames: list[ImageValue]
    steps: int
    method: str


class ArithmeticReply(ImagesReply):
    image: ImageValue
    latent: list[float]
    scale: float
    a: ImageValue | None = None
    b: ImageValue | None = None
    c: ImageValue | None = None


class GenerateReply(ImagesReply):
    images: list[ImageValue]
    seed: int
    temperature: float
    class_: str | None = Field(None, alias="class", description="conditional models")
    sampler: str | None = Field(None, description="the sampler the request chose, if it chose")


class ClassifyReply(Timed):
    label: str
    probabilities: dict[str, float]


class LikelihoodValue(BaseModel):
    log_likelihood_nats: float
    bits_per_dim: float
    exact: bool
    kind: str
    convention: str
    samples: int | None = None


class LikelihoodReply(LikelihoodValue, Timed):
    pass


class AnomalyReply(Timed):
    score: float
    percentile: float
    anomalous: bool
    threshold_percentile: float
    method: str
    reference: str
    likelihood: LikelihoodValue
    parts: dict[str, float] | None = Field(
        None,
        description="a combined score's parts: input_complexity (bits/dim) and those its "
        "calibration adds: feature_distance (squared Mahalanobis distance of the model's "
        "features), orientation (bits/dim by which the likeliest quarter turn or upside-down "
        "mirror of the image beats the image as given)",
    )


class AtlasMap(BaseModel):
    model: str
    projection: str
    projections: list[str]
    description: str
    inverse: str
    source: str
    count: int
    class_names: list[str]
    bounds: dict[str, list[float]]
    points: list[list[float]]
    labels: list[int]
    thumbnails: dict[str, Any] | None
    explained_variance: list[float] | None = None


class AtlasDecodeReply(ImagesReply):
    projection: str
    images: list[ImageValue]


class AtlasLocateReply(Timed):
    projection: str
    point: list[float]
    latent: list[float]
    neighbour_classes: dict[str, int]


class ReloadReply(BaseModel):
    models: list[str]
    loaded: list[str]
    unchanged: list[str]
    failed: dict[str, str]
    kept_old: list[str]
    plugins_failed: dict[str, str]
    workers: str


# --- the Open Inference Protocol (routes/v2.py) ----------------------------------------------


class V2Error(BaseModel):
    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="row-major values (absent when binary)")


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any number of rows")
    parameters: dict[str, Any] | None = None


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] | None = None


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2IndexEntry(BaseModel):
    name: str
    version: str
    state: str


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferReply(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]
