"""A direct dispatcher for the operation routes, ``POST /v1/models/{name}/{operation}``
(and ``/atlas/decode``, ``/atlas/locate``).

Why: these endpoints take only ``(name, request, state)`` and parse the body themselves
(``parsing.py``), so FastAPI's per-request machinery (a scan of every route, two
``AsyncExitStack``s, the dependency solver, the response serializer) does no work for them
but still costs about a fifth of the app's time per request (bench/README.md). This
middleware, innermost in the stack, matches those paths itself and awaits the very same
endpoint functions.

What does not change: the routes stay FastAPI routes (OpenAPI, ``/docs``, 404s, 405s and
every other path go through FastAPI); the middleware around this one (body limit, metrics,
security headers, CORS) runs as before, with ``scope["route"]`` and ``path_params`` set for
it; expected errors go through the app's own exception handlers; anything unexpected
propagates to the same logged, generic 500.
"""

from __future__ import annotations

import asyncio
import inspect

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .context import CURRENT, RequestContext, from_scope
from .deps import get_state
from .errors import handler_for

PREFIX = "/v1/models/"
ENDPOINT_PARAMETERS = ["name", "request", "state"]


def operation_routes(*routers: APIRouter) -> dict[str, APIRoute]:
    """operation -> its route, for every ``POST /v1/models/{name}/<operation>`` route whose
    endpoint takes exactly (name, request, state): the ones FastAPI has nothing to solve for.
    An operation is one or more identifiers separated by "/" ("reconstruct", "atlas/decode")."""
    found = {}
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or route.methods != {"POST"}:
            continue
        head, _, operation = route.path.partition(PREFIX + "{name}/")
        if head or not all(part.isidentifier() for part in operation.split("/")):
            continue
        if list(inspect.signature(route.endpoint).parameters) == ENDPOINT_PARAMETERS:
            found[operation] = route
    return found


class OperationDispatcher:
    def __init__(self, app: ASGIApp, routers: list[APIRouter], fastapi_app: FastAPI) -> None:
        self.app = app
        self.routes = operation_routes(*routers)
        self.fastapi_app = fastapi_app  # its exception handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, name = matched
        scope["route"] = route
        scope["path_params"] = {"name": name}
        request = Request(scope, receive, send)
        ctx: RequestContext | None = None
        try:
            ctx = from_scope(scope)  # a bad X-Request-Timeout is a 422 like any parameter
            scope["latentserve.disconnected"] = ctx.disconnected  # protocol.py calls it
            token = CURRENT.set(ctx)
            try:
                result = await route.endpoint(
                    name=name, request=request, state=await get_state(request)
                )
            finally:
                CURRENT.reset(token)
            response = result if isinstance(result, Response) else JSONResponse(result)
        except asyncio.CancelledError:
            if ctx is not None and ctx.gone:
                scope["latentserve.client_gone"] = True  # counted as 499, nginx's "client closed"
                return  # the client left; its work was dropped and there is no one to answer
            # uvicorn cancels what still runs when the shutdown grace period ends: the client
            # may retry elsewhere, so say that (503), rather than an internal error (500)
            response = JSONResponse(
                {"detail": "the server is shutting down; retry on another replica"},
                status_code=503, headers={"Retry-After": "1", "Connection": "close"},
            )  # fmt: skip
        except Exception as exc:
            handler = handler_for(self.fastapi_app, exc)
            if handler is None:
                raise  # the app's 500 handler logs it and answers without internals
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[APIRoute, str] | None:
        """(the operation's route, the model name), or None for every other request."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return None
        name, slash, operation = path[len(PREFIX) :].partition("/")
        route = self.routes.get(operation)  # "op/", "a//b" and unknown operations: not ours
        return (route, name) if route is not None and name and slash else None
