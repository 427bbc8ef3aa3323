"""The one source of configuration: environment variables prefixed ``LATENTSERVE_``.

Every field below is documented in the README's settings table. Lists accept JSON
(``["a","b"]``) or a comma-separated string (``a,b``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
PLACEHOLDER_KEYS = {"changeme", "change-me", "secret", "password", "apikey", "api-key", "test"}


#: settings that were replaced: the old variable -> what to set instead
RENAMED = {
    "LATENTSERVE_TORCHSCRIPT": "LATENTSERVE_ENGINE (torchscript where it was true, torch where false)"
}

#: LATENTSERVE_ variables that belong to something other than the service: the Python
#: client's server address, the test suite's knobs
NOT_SETTINGS = {"LATENTSERVE_URL", "LATENTSERVE_FUZZ_EXAMPLES", "LATENTSERVE_SCREENSHOTS"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTSERVE_", extra="forbid")

    # where models come from
    weights_dir: Path = Field(
        DEFAULT_WEIGHTS, description="folder holding one sub-folder per model"
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="model names to load (empty: every folder in weights_dir)"
    )
    # network
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (none by default)",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="proxies whose X-Forwarded-For names the client (comma-separated "
        "addresses, or *): the client address of per-client limits",
    )  # fmt: skip
    client_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request must arrive whole (headers and body) within "
        "this many seconds of its first byte; the connection is closed otherwise",
    )  # fmt: skip
    max_connections_per_client: int = Field(
        256, ge=1, description="open connections one address may hold (503 beyond); trusted "
        "proxies (forwarded_allow_ips) are exempt",
    )  # fmt: skip
    api_key: SecretStr | None = Field(
        None, description="enables /v1/admin/*, which then needs this value in X-API-Key"
    )
    # limits
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body (413 beyond)"
    )
    max_image_pixels: int = Field(
        16_777_216,
        ge=64,
        description="largest decoded image, width x height, checked before decoding",
    )
    max_n: int = Field(256, ge=1, le=4096, description="largest n for generate")
    max_steps: int = Field(64, ge=2, le=1024, description="largest steps for interpolate")
    chain_steps: int = Field(
        100, ge=1, le=100_000, description="steps of a chain sampler (a denoising "
        "autoencoder's GSN chain) when a generate request gives none",
    )  # fmt: skip
    max_chain_steps: int = Field(
        1000, ge=1, le=100_000, description="largest steps a generate request may ask of a chain"
    )
    # likelihood and anomaly (service/density.py)
    likelihood_samples: int = Field(
        1, ge=1, le=100_000, description="default importance samples K of a VAE's likelihood "
        "(1: the ELBO; more: the importance-weighted bound)",
    )  # fmt: skip
    max_likelihood_samples: int = Field(
        1000, ge=1, le=100_000, description="largest samples a likelihood request may ask for"
    )
    anomaly_percentile: float = Field(
        99.0, gt=0, lt=100, description="an image is anomalous when its score's percentile "
        "among held-out training-like images is above this",
    )  # fmt: skip
    # GAN inversion (encode / reconstruct for GANs)
    inversion_steps: int = Field(200, ge=1, le=5000, description="Adam steps when inverting a GAN")
    inversion_restarts: int = Field(
        4, ge=1, le=64, description="random starts per image; the best is kept"
    )
    inversion_refine_steps: int = Field(
        16,
        ge=0,
        le=1000,
        description="L-BFGS evaluations after a GAN inverter's prediction (amortised)",
    )
    inversion_time_budget_s: float = Field(
        3.0, gt=0, le=120, description="time cap of one inversion batch"
    )
    # batching and compute
    max_batch_size: int = Field(64, ge=1, description="most images in one forward pass")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="how long a batch waits for company")
    max_queue: int = Field(2048, ge=1, description="queued requests before 503 + Retry-After")
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads for inference")
    # isolation: expensive work runs in a lane of its own (inference.py)
    expensive_rows: int = Field(
        32, ge=1, description="a request of more rows than this (generate n, interpolate steps) "
        "is expensive; so is every search (GAN inversion)",
    )  # fmt: skip
    expensive_lane_nice: int = Field(
        19, ge=0, le=19, description="nice value added to the expensive lane's threads (Linux)"
    )
    expensive_pause_ms: float = Field(
        4.0, ge=0, le=1000, description="at each slice boundary of expensive work (a search "
        "step, a chunk of rows; every as long of a large reply's encoding), wait this long "
        "while the cheap lane is active, less if it falls idle (0: never)",
    )  # fmt: skip
    expensive_slice_rows: int = Field(
        32, ge=1, description="expensive calls of more rows run in chunks of this many, with a "
        "slice boundary between chunks",
    )  # fmt: skip
    max_expensive_per_client: int = Field(
        2, ge=1, description="expensive requests one client address may have running (429 beyond)"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="default deadline of a request (504 past it); "
        "a request's X-Request-Timeout header overrides it",
    )  # fmt: skip
    expensive_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="default deadline of an expensive request"
    )
    engine: Literal["auto", "onnxruntime", "torchscript", "torch"] = Field(
        "auto",
        description="what runs model calls (engines.py): auto = the fastest engine whose "
        "outputs match the eager call (ONNX Runtime, unless a checked TorchScript trace runs in "
        "under 90% of its time on the compile example), else eager PyTorch; onnxruntime (ONNX "
        "Runtime, else a trace, else eager, untimed), torchscript (a trace or eager), torch "
        "(eager)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where ONNX Runtime runs: cuda needs its CUDA provider; auto uses it "
        "when present, else the CPU",
    )  # fmt: skip
    trace_at_start: bool = Field(
        False,
        description="compile (export or trace) every call of every model right after loading; "
        "readiness waits for it, so no request routed after ready waits for a compile",
    )
    png_compress_level: int = Field(
        0, ge=0, le=3, description="ISA-L deflate level of PNG replies (0 fastest, 3 smallest)"
    )
    # process
    workers: int = Field(
        1, ge=1, le=64,
        description="uvicorn worker processes (forked ones share the models the supervisor loaded)",
    )  # fmt: skip
    worker_start: Literal["fork", "spawn"] = Field(
        "fork", description="how several workers start: 'fork' from a supervisor that has "
        "imported torch and the service and preloaded the models (shared copy-on-write), or "
        "'spawn' (uvicorn's own: fresh interpreters, each loading everything)",
    )  # fmt: skip
    reload_signal_file: Path | None = Field(
        None,
        description="file the workers share so that an admin reload reaches all of them "
        "(python -m service sets it when workers > 1)",
    )
    graceful_timeout_s: int = Field(
        30, ge=0, description="on SIGTERM, time to finish in-flight requests"
    )
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics, for a process whose "
        "OpenTelemetry SDK is configured (off: no per-request check for one)",
    )
    demo_page: bool = Field(True, description="serve the demo front end at /")

    @field_validator("models", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_urls(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin {origin!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _refuse_renamed_variables(self) -> Settings:
        """A variable that changed meaning must not be ignored in silence."""
        for old, new in RENAMED.items():
            if old in os.environ:
                raise ValueError(f"{old} was replaced by {new}; unset {old}")
        return self

    @model_validator(mode="after")
    def _refuse_unknown_variables(self) -> Settings:
        """A misspelt variable (LATENTSERVE_MAX_BATCH=8) would be ignored in silence and the
        service would run on the default: refuse to start, naming the nearest setting."""
        known = {f"LATENTSERVE_{name.upper()}" for name in type(self).model_fields}
        unknown = sorted(
            name for name in os.environ
            if name.upper().startswith("LATENTSERVE_") and name.upper() not in known
            and name.upper() not in NOT_SETTINGS and name not in RENAMED
        )  # fmt: skip
        if unknown:
            hints = []
            for name in unknown:
                near = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
                hints.append(f"{name} (did you mean {near[0]}?)" if near else name)
            raise ValueError(
                f"unknown setting {', '.join(hints)}; every setting is listed in the README's "
                "settings table"
            )
        return self

    @model_validator(mode="after")
    def _refuse_weak_api_key(self) -> Settings:
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if len(key) < 16 or key.lower() in PLACEHOLDER_KEYS:
                raise ValueError(
                    "LATENTSERVE_API_KEY must be at least 16 characters and not a placeholder; "
                    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return self
