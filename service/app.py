"""The app factory: ``create_app(Settings())`` builds a complete, independent service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import errors, protocol
from .batching import BatchEngine
from .config import Settings
from .dispatch import OperationDispatcher
from .inference import Operations
from .memory import keep_batch_buffers
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, ObservabilityMiddleware
from .onnx_engine import providers_for
from .preloading import preloaded_for
from .registry import ModelRegistry
from .reloading import ReloadSignal, follow, load_models
from .routes import admin, atlas, health, models, v2
from .routes.openapi import add_schemas
from .state import AppState

log = logging.getLogger("latentserve")

STATIC = Path(__file__).parent / "static"
DESCRIPTION = """Encode, decode, reconstruct, denoise, interpolate and generate images with
autoencoders, VAEs and GANs. Images go in as multipart uploads, base64 JSON or raw PNG/JPEG
bodies; results come back as JSON with PNG data URLs, raw arrays, PNG or GIF."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.device == "cuda" and "CUDAExecutionProvider" not in providers_for("cuda"):
        raise RuntimeError(
            "LATENTSERVE_DEVICE=cuda, but ONNX Runtime has no CUDA provider here (install "
            "onnxruntime-gpu on a machine with a GPU), or use auto or cpu"
        )
    protocol.configure(settings.client_timeout_s, settings.max_connections_per_client,
                       settings.forwarded_allow_ips)  # fmt: skip
    metrics = Metrics()
    # a worker forked from a supervisor that preloaded starts from its models and calls
    preloaded = preloaded_for(settings)
    registry = ModelRegistry(settings.weights_dir, settings.models, settings.torch_threads,
                             preloaded.models if preloaded else None)  # fmt: skip
    engine = BatchEngine(
        settings.max_batch_size, settings.max_wait_ms / 1000, settings.max_queue,
        settings.torch_threads, on_batch=metrics.observe_batch, on_drop=metrics.observe_drop,
        trim_after_idle_s=1.0,
    )  # fmt: skip
    # the expensive lane (inference.py): its own queue and thread, at a lower priority
    expensive = BatchEngine(
        settings.max_batch_size, settings.max_wait_ms / 1000, settings.max_queue,
        settings.torch_threads, on_batch=metrics.observe_batch, on_drop=metrics.observe_drop,
        name="inference-expensive", nice=settings.expensive_lane_nice, yield_to=engine,
        pause_s=settings.expensive_pause_ms / 1000, slice_rows=settings.expensive_slice_rows,
        trim_after_idle_s=1.0,
    )  # fmt: skip
    signal = ReloadSignal(settings.reload_signal_file) if settings.reload_signal_file else None
    operations = Operations(engine, settings, expensive, preloaded.compiled if preloaded else None)
    state = AppState(settings, registry, engine, operations, metrics, signal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        keep_batch_buffers()  # a batch's buffers come from the heap, not fresh pages (memory.py)
        await engine.start()
        await expensive.start()
        loading = asyncio.create_task(asyncio.to_thread(load_models, state))
        following = asyncio.create_task(follow(state, signal)) if signal else None
        if settings.workers > 1:
            # A worker starts accepting when this returns. Alone, a server answers while it
            # loads (readiness says 503 until it has); beside others, a worker that accepted
            # before its models loaded would answer 503 to requests its siblings could serve,
            # as a worker the supervisor restarts after a crash would.
            await asyncio.shield(loading)

        async def warm_up() -> None:
            await asyncio.shield(loading)
            try:
                compiled = await state.operations.warm_up(list(registry.models.values()))
            except Exception:  # the calls compile on first use instead
                log.exception("warming up the models failed")
                return
            finally:
                state.warmed = True  # readiness no longer waits
            log.info("%d model calls compiled ahead of traffic", compiled)

        # with LATENTSERVE_TRACE_AT_START, ready means compiled: no routed request waits for
        # an export or a trace (a request sent before still works, and may wait)
        state.warmed = not settings.trace_at_start

        warming = asyncio.create_task(warm_up() if settings.trace_at_start else asyncio.sleep(0))
        try:
            yield
        finally:
            if following:
                following.cancel()
            warming.cancel()  # unfinished warm-up batches are skipped, requests are not
            await loading
            await asyncio.gather(engine.stop(), expensive.stop())
            operations.encoder.shutdown(wait=True)
            operations.gifs.close()

    # FastAPI asks OpenTelemetry for its global providers on every request unless told not
    # to (three environment lookups each time, ~6% of the event loop's time in the profile)
    otel = settings.opentelemetry
    app = FastAPI(
        title="latentserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
        docs_url="/docs", openapi_url="/openapi.json", redoc_url=None,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
        # operation ids are the route functions' names (reconstruct, v2_infer): what
        # generated clients name their functions (tests/test_openapi_clients.py)
        generate_unique_id_function=lambda route: route.name,
    )  # fmt: skip
    app.state.latentserve = state
    errors.install(app)
    app.include_router(models.router)
    app.include_router(atlas.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    add_schemas(app, v2.SCHEMAS)
    if settings.api_key is not None:
        app.include_router(admin.router)
    if settings.demo_page and (STATIC / "index.html").exists():
        app.mount("/demo", StaticFiles(directory=STATIC, html=True), name="demo")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/demo/")

    # Innermost: the operation routes skip FastAPI's per-request machinery (dispatch.py).
    app.add_middleware(OperationDispatcher, routers=[models.router, atlas.router], fastapi_app=app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Accept", "X-API-Key"], expose_headers=["X-Latentserve-Seed"],
        )  # fmt: skip
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, registry=registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
