"""Admin actions. Mounted only when LATENTSERVE_API_KEY is set; every call needs X-API-Key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from ..deps import State, require_api_key
from ..reloading import load_models

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post("/reload", summary="Re-read the weights folder and swap models in atomically")
async def reload(state: State) -> dict[str, Any]:
    """Load new and changed models; a model whose new files are bad keeps its old version.
    Requests already running finish on the model they started with. With several workers,
    the others follow within a second (`workers` in the reply says which reloaded)."""
    report = await run_in_threadpool(load_models, state)
    if state.reload_signal is not None:
        state.reload_signal.send()
    workers = "all (the others within 1 s)" if state.reload_signal else "this one"
    return {"models": sorted(state.registry.models), **report, "workers": workers}
