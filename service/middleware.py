"""Pure ASGI middleware: request body cap, security headers, per-request metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics
from .registry import ModelRegistry

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The demo page gets a strict CSP; /docs keeps FastAPI's Swagger UI, which loads from a CDN.
DEMO_CSP = (
    b"content-security-policy",
    b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    b"connect-src *; frame-ancestors 'none'",
)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


class BodyLimitMiddleware:
    """413 when Content-Length says the body is too large, or when the stream exceeds it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_json(
                        send,
                        413,
                        f"request body is larger than the limit of {self.max_bytes} bytes",
                    )
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class ObservabilityMiddleware:
    """Adds security headers to every reply and counts requests by route, model and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, registry: ModelRegistry) -> None:
        self.app = app
        self.metrics = metrics
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                wanted = (
                    [*SECURITY_HEADERS, DEMO_CSP]
                    if scope["path"].startswith("/demo")
                    else SECURITY_HEADERS
                )
                extra = [(k, v) for k, v in wanted if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if scope.get("latentserve.client_gone"):
                status = 499
            route = _route_template(scope)
            model = scope.get("path_params", {}).get("name", "")
            if model and self.registry.get(model) is None:
                model = "(unknown)"  # never a label per hostile name
            self.metrics.observe_request(route, model, status, time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "(unmatched)"
