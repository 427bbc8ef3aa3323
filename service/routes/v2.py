"""/v2: the Open Inference Protocol (KServe V2) over HTTP, for Triton's and KServe's clients.

Server metadata, the repository index, model metadata, model readiness and infer, each with
the optional ``/versions/{version}`` segment (every model has version "1"). Each served
operation is a v2 model named ``<model>.<operation>`` (service/oip_models.py has the mapping;
docs/open-inference-protocol.md the table). Liveness and readiness are in health.py.

Errors are the protocol's ``{"error": "..."}``: the app's own handlers word them (the same
messages as REST), and an invalid request is 400 here where REST says 422.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from ..context import CURRENT, MAX_TIMEOUT_S, RequestContext, from_scope
from ..deps import State, find_model
from ..errors import handler_for
from ..oip import HEADER_LENGTH, ProtocolError, read_infer_request, write_infer_response
from ..oip_models import infer as run_infer
from ..oip_models import metadata
from ..problems import ModelNotFound, NotSupported
from ..registry import LoadedModel
from ..replies import (
    V2Error,
    V2IndexEntry,
    V2InferReply,
    V2InferRequest,
    V2ModelMetadata,
    V2ModelReady,
    V2ServerMetadata,
)
from ..state import AppState

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
EXTENSIONS = ["binary_tensor_data", "model_repository"]
VERSION = "1"
ModelName = Annotated[str, Path(description="<model>.<operation>", examples=["vae-fashion.decode"])]
Version = Annotated[str, Path(description='every model has version "1"', examples=["1"])]


async def answer(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
    """``work``'s reply, or its expected failure in the protocol's shape."""
    try:
        return await work()
    except Exception as exc:
        handler = handler_for(request.app, exc)
        if handler is None:
            raise  # the app's 500 handler logs it and answers without internals
        reply = await handler(request, exc)
        status = 400 if reply.status_code == 422 else reply.status_code
        headers = {k: v for k, v in reply.headers.items() if k.lower() == "retry-after"}
        error = json.loads(bytes(reply.body)).get("detail", "error")
        return JSONResponse({"error": error}, status_code=status, headers=headers)


def v2_model(state: AppState, name: str, version: str | None) -> tuple[LoadedModel, str]:
    """``<model>.<operation>`` -> the served model and the operation, or 404 saying why."""
    model, dot, operation = name.rpartition(".")
    if not dot or not model:
        served = ", ".join(sorted(state.registry.models)) or "none"
        raise ModelNotFound(
            f"v2 models are named <model>.<operation>, such as vae-fashion.decode; "
            f"the served models: {served}"
        )
    lm = find_model(state, model)
    if operation not in lm.operations:
        raise ModelNotFound(
            f"{model!r} has no operation {operation[:40]!r}; its v2 models: "
            + ", ".join(f"{model}.{op}" for op in lm.operations)
        )
    if version not in (None, "", VERSION):
        raise ModelNotFound(f"{name!r} has only version {VERSION}, not {version[:20]!r}")
    return lm, operation


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error, "description": "a protocol violation, named"},
    404: {"model": V2Error, "description": "no such v2 model or version"},
    413: {"model": V2Error, "description": "body too large"},
    503: {"model": V2Error, "description": "loading, at capacity or shutting down"},
    504: {"model": V2Error, "description": "parameters.timeout (or X-Request-Timeout) passed"},
}
# the infer body's schema and those it refers to, added to the app's components (app.py):
# FastAPI registers only the models of typed parameters and replies
_REQUEST = V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
SCHEMAS = {**_REQUEST.pop("$defs", {}), "V2InferRequest": _REQUEST}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON tensors; or, with Inference-Header-Content-Length: N, N bytes of "
        "this JSON followed by the binary tensors (Triton's binary tensor extension).",
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/V2InferRequest"},
            "example": {"id": "1", "inputs": [{"name": "latent", "shape": [1, 16],
                        "datatype": "FP32", "data": [0.0] * 16}]},
        }},
    }
}  # fmt: skip


@router.get("", summary="Server metadata", response_model=None,
            responses={200: {"model": V2ServerMetadata}})  # fmt: skip
async def v2_server_metadata(request: Request) -> Response:
    """Name, version and the protocol extensions served."""
    return JSONResponse({"name": "latentserve", "version": request.app.version,
                         "extensions": EXTENSIONS})  # fmt: skip


@router.post("/repository/index", summary="Every v2 model", response_model=None,
             responses={200: {"model": list[V2IndexEntry]}})  # fmt: skip
async def v2_repository_index(state: State) -> Response:
    """Each served operation of each model, as ``<model>.<operation>``, READY."""
    index = [
        {"name": f"{lm.name}.{op}", "version": VERSION, "state": "READY"}
        for lm in state.registry.models.values()
        for op in lm.operations
    ]
    return JSONResponse(index)


async def _metadata(request: Request, state: AppState, name: str, version: str | None) -> Response:
    async def work() -> Response:
        lm, operation = v2_model(state, name, version)
        return JSONResponse(metadata(lm, operation, name))

    return await answer(request, work)


async def _ready(request: Request, state: AppState, name: str, version: str | None) -> Response:
    async def work() -> Response:
        v2_model(state, name, version)
        return JSONResponse({"name": name, "ready": True})

    return await answer(request, work)


@router.get("/models/{name}", summary="Model metadata", response_model=None,
            responses={200: {"model": V2ModelMetadata}, **ERRORS})  # fmt: skip
async def v2_model_metadata(name: ModelName, request: Request, state: State) -> Response:
    """Inputs and outputs with datatype and shape (-1: any number of rows), and the
    parameters the operation accepts."""
    return await _metadata(request, state, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version",
            response_model=None, responses={200: {"model": V2ModelMetadata}, **ERRORS})  # fmt: skip
async def v2_model_version_metadata(
    name: ModelName, version: Version, request: Request, state: State
) -> Response:
    return await _metadata(request, state, name, version)


@router.get("/models/{name}/ready", summary="Model readiness", response_model=None,
            responses={200: {"model": V2ModelReady}, **ERRORS})  # fmt: skip
async def v2_model_ready(name: ModelName, request: Request, state: State) -> Response:
    """200 when the model serves the operation; 404 (or 503 while loading) otherwise."""
    return await _ready(request, state, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness of a version",
            response_model=None, responses={200: {"model": V2ModelReady}, **ERRORS})  # fmt: skip
async def v2_model_version_ready(
    name: ModelName, version: Version, request: Request, state: State
) -> Response:
    return await _ready(request, state, name, version)


INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2InferReply, "description": "JSON; or, with binary outputs asked for, "
          "application/octet-stream: Inference-Header-Content-Length bytes of JSON, then the tensors"},
    **ERRORS,
}  # fmt: skip


@router.post("/models/{name}/infer", summary="Inference", response_model=None,
             responses=INFER_RESPONSES, openapi_extra=INFER_BODY)  # fmt: skip
async def v2_infer(name: ModelName, request: Request, state: State) -> Response:
    """JSON tensors, or Triton's binary tensor extension (``Inference-Header-Content-Length``)
    in either direction. The body is read as bytes whatever its Content-Type (Triton's
    client sends none). ``parameters.timeout`` (microseconds) is the request's deadline."""
    return await _infer(request, state, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version",
             response_model=None, responses=INFER_RESPONSES, openapi_extra=INFER_BODY)  # fmt: skip
async def v2_version_infer(
    name: ModelName, version: Version, request: Request, state: State
) -> Response:
    return await _infer(request, state, name, version)


async def _infer(request: Request, state: AppState, name: str, version: str | None) -> Response:
    ctx: RequestContext | None = None

    async def work() -> Response:
        nonlocal ctx
        lm, operation = v2_model(state, name, version)
        ctx = from_scope(request.scope)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise NotSupported(f"Content-Encoding {encoding[:20]!r}: send the body uncompressed")
        parsed = read_infer_request(await request.body(), request.headers.get(HEADER_LENGTH))
        timeout = parsed.parameters.pop("timeout", None)
        if timeout is not None:
            ctx.timeout_s, ctx.timeout_from = _timeout(timeout, ctx.timeout_s), "parameters.timeout"
        request.scope["latentserve.disconnected"] = ctx.disconnected  # protocol.py calls it
        token = CURRENT.set(ctx)
        try:
            outputs = await run_infer(state.operations, lm, operation, parsed, state.settings.max_n)
        finally:
            CURRENT.reset(token)
        body, headers = write_infer_response(name, VERSION, parsed, outputs)
        return Response(body, headers=headers)

    try:
        return await answer(request, work)
    except asyncio.CancelledError:
        if ctx is not None and ctx.gone:
            request.scope["latentserve.client_gone"] = True  # counted as 499
            return Response(status_code=499)  # the client left; nobody reads this
        return JSONResponse(
            {"error": "the server is shutting down; retry on another replica"},
            status_code=503, headers={"Retry-After": "1", "Connection": "close"},
        )  # fmt: skip


def _timeout(value: Any, header: float | None) -> float:
    """``parameters.timeout`` in microseconds (tritonclient's ``timeout=``) -> seconds; the
    smaller of it and X-Request-Timeout wins."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ProtocolError("parameters.timeout: a positive number of microseconds")
    seconds = float(value) / 1e6
    if seconds > MAX_TIMEOUT_S:
        raise ProtocolError(
            f"parameters.timeout: at most {MAX_TIMEOUT_S:g} s ({MAX_TIMEOUT_S * 1e6:.0f} µs)"
        )
    return seconds if header is None else min(seconds, header)
