"""Admin actions. Mounted only when LATENTSERVE_API_KEY is set; every call needs X-API-Key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from ..deps import State, require_api_key

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post("/reload", summary="Re-read the weights folder and swap models in atomically")
async def reload(state: State) -> dict[str, Any]:
    """Load new and changed models; a model whose new files are bad keeps its old version.
    Requests already running finish on the model they started with."""
    report = await run_in_threadpool(state.registry.load_all)
    for name, lm in state.registry.models.items():
        state.metrics.load_seconds.labels(name).set(lm.load_seconds)
    state.metrics.models_failed.set(len(state.registry.failed))
    return {"models": sorted(state.registry.models), **report}
