"""Shared dependencies: the app state and model lookup with precise 404/400 messages."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from .problems import ModelNotFound, NotSupported, StillLoading
from .registry import LoadedModel, valid_name
from .state import AppState


async def get_state(request: Request) -> AppState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a threadpool, and that
    hop showed up as 4% of the CPU in the profile, and removing it gave +21% req/s
    (bench/README.md)."""
    state: AppState = request.app.state.latentserve
    return state


State = Annotated[AppState, Depends(get_state)]


def find_model(state: AppState, name: str, operation: str | None = None) -> LoadedModel:
    """The served model called ``name``; 404 lists the names, 400 lists the operations,
    503 while the models are still loading."""
    lm = state.registry.get(name)
    if lm is None and not state.registry.loaded_once:
        # Starting up: every model is still loading (with several workers, a readiness
        # probe may already have seen another worker ready). Retry, don't give up.
        raise StillLoading("the models are still loading; retry shortly")
    if lm is None:
        available = ", ".join(sorted(state.registry.models)) or "none"
        shown = name if valid_name(name) else "(invalid name)"
        reason = state.registry.failed.get(name) if valid_name(name) else None
        detail = f"model {shown!r} is not available" + (" (it failed to load)" if reason else "")
        raise ModelNotFound(f"{detail}; available models: {available}")
    if operation is not None and operation not in lm.operations:
        raise NotSupported(
            f"model {name!r} ({lm.model.family}) does not support {operation}; "
            f"it supports: {', '.join(lm.operations)}"
        )
    return lm


async def require_api_key(state: State, x_api_key: Annotated[str | None, Header()] = None) -> None:
    expected = state.settings.api_key
    if expected is None:  # the admin router is not even mounted then; belt and braces
        raise HTTPException(404, "Not Found")
    given = (x_api_key or "").encode()
    if not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise HTTPException(
            401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
        )
