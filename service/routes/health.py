"""Liveness, readiness (also at the Open Inference Protocol paths) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import State
from ..replies import LiveReply, ReadyReply

router = APIRouter(tags=["health"])


@router.get(
    "/health/live",
    summary="The process is up",
    response_model=None,
    responses={200: {"model": LiveReply}},
)
@router.get("/v2/health/live", include_in_schema=False)
async def live() -> dict[str, Any]:
    """200 while the process can answer at all."""
    return {"status": "live", "live": True}


@router.get(
    "/health/ready",
    summary="Every configured model is serving",
    responses={
        200: {"model": ReadyReply},
        503: {
            "model": ReadyReply,
            "description": "loading, or a model failed; the body says which and why",
        },
    },
)
@router.get("/v2/health/ready", include_in_schema=False)
async def ready(state: State) -> JSONResponse:
    """200 once every configured model has loaded; 503 before, or while any failed."""
    not_ready = state.registry.not_ready()
    if not state.warmed and not not_ready:
        not_ready = {"(all)": "compiling every model call (LATENTSERVE_TRACE_AT_START)"}
    ok = not not_ready and bool(state.registry.models)
    body = {
        "status": "ready" if ok else "not ready",
        "ready": ok,
        "models": sorted(state.registry.models),
        "not_ready": not_ready
        or ({} if ok else {"(none)": "no models found in the weights folder"}),
        # installed family plugins that failed to load: named here, never fatal to the others
        "plugins_failed": state.registry.plugins_failed,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    """Requests by route/model/status, latency, batch sizes, queue depth, model load times,
    and the engine each compiled model call runs on."""
    state.metrics.queue_depth.set(state.engine.depth + state.operations.expensive.depth)
    state.metrics.expensive_paused.set(state.operations.expensive.paused_s)
    state.metrics.observe_engines(state.operations.engine_states())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
