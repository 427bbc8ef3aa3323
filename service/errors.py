"""Two-tier errors: expected failures carry a precise message; anything else is logged with
its traceback and answered with a generic 500 that reveals nothing."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import DeadlineExceeded, EngineStopped, QueueFull
from .imaging import ImageError
from .middleware import BodyTooLarge
from .problems import Problem

log = logging.getLogger("latentserve")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ImageError)
    async def image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(DeadlineExceeded)  # operations word it (TimedOut); a fallback
    async def deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return JSONResponse({"detail": f"{exc}; send a longer X-Request-Timeout"}, status_code=504)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": "the server is at capacity; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(EngineStopped)
    async def stopping(request: Request, exc: EngineStopped) -> JSONResponse:
        return JSONResponse({"detail": "the server is shutting down; retry on another replica"},
                            status_code=503, headers={"Retry-After": "1"})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def handler_for(app: FastAPI, exc: Exception) -> Any:
    """The app's handler for this exception's class or nearest base, short of Exception:
    None for an unexpected error (the app's 500 handler logs it)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None


__all__ = ["HTTPException", "handler_for", "install"]
