"""Admin actions. Mounted only when LATENTSERVE_API_KEY is set; every call needs X-API-Key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..deps import State, require_api_key
from ..reloading import reload_models
from ..replies import ErrorReply, ReloadReply

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post(
    "/reload",
    summary="Re-read the weights folder and swap models in atomically",
    response_model=None,
    responses={200: {"model": ReloadReply}, 401: {"model": ErrorReply}},
)
async def reload(state: State) -> dict[str, Any]:
    """Load new and changed models beside the served ones, trace them, then swap them in; a
    model whose new files are bad keeps its old version. Requests keep being served by the
    old versions meanwhile. With several workers, the others follow within a second
    (`workers` in the reply says which reloaded)."""
    report = await reload_models(state)
    if state.reload_signal is not None:
        state.reload_signal.send()
    workers = "all (the others within 1 s)" if state.reload_signal else "this one"
    return {"models": sorted(state.registry.models), **report, "workers": workers}
