"""The direct dispatcher of the operation routes answers exactly as FastAPI's routing does,
and the hand-written PNG encoder writes PNGs that decode to the same pixels."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import service.dispatch
from service import Settings, create_app
from service.dispatch import OperationDispatcher, operation_routes
from service.imaging import encode_png, png_bytes
from service.routes import atlas as atlas_routes
from service.routes import models as model_routes

from .conftest import png

IMG64 = base64.b64encode(png()).decode()
ROUTERS = (model_routes.router, atlas_routes.router)

# (method, path, keyword arguments of client.request): successes and every kind of refusal
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/models/ae-t/reconstruct", {"json": {"image": IMG64}}),
    ("POST", "/v1/models/ae-t/reconstruct?format=array", {"json": {"image": IMG64}}),
    (
        "POST",
        "/v1/models/ae-t/reconstruct",
        {"content": png(), "headers": {"content-type": "image/png", "accept": "image/png"}},
    ),
    ("POST", "/v1/models/ae-t/encode", {"files": {"image": ("x.png", png(), "image/png")}}),
    ("POST", "/v1/models/vae-t/decode?format=array", {"json": {"latents": [[0.1, 0.2, 0.3]]}}),
    (
        "POST",
        "/v1/models/gan-t/generate",
        {"json": {"n": 3, "seed": 5}, "headers": {"accept": "image/png"}},
    ),
    (
        "POST",
        "/v1/models/cgan-t/generate?format=array",
        {"json": {"n": 2, "seed": 1, "class": "bag"}},
    ),
    ("POST", "/v1/models/classifier-t/classify", {"json": {"image": IMG64}}),
    (
        "POST",
        "/v1/models/dae-t/denoise",
        {"json": {"image": IMG64, "noise": {"kind": "gaussian", "level": 0.2, "seed": 3}}},
    ),
    (
        "POST",
        "/v1/models/vae-t/interpolate?format=array",
        {"json": {"seed_a": 1, "seed_b": 2, "steps": 3}},
    ),
    (
        "POST",
        "/v1/models/vae-t/arithmetic?format=array",
        {"json": {"latent_a": [1, 0, 0], "latent_b": [0, 1, 0], "latent_c": [0, 0, 1]}},
    ),
    ("POST", "/v1/models/vae-t/atlas/decode", {"json": {"points": [[0, 0], [0.1, 0]]}}),
    ("POST", "/v1/models/vae-t/atlas/locate", {"json": {"image": IMG64, "projection": "tsne"}}),
    ("GET", "/v1/models/vae-t/atlas?projection=tsne", {}),
    # refusals
    ("POST", "/v1/models/vae-t/atlas/decode", {"json": {"points": [[1e6, 0]]}}),
    ("POST", "/v1/models/pixelcnn-t/atlas/decode", {"json": {"points": [[0, 0]]}}),
    ("POST", "/v1/models/ae-t/atlas/decode", {"json": {"points": [[0, 0]], "projection": "tsne"}}),
    ("POST", "/v1/models/ae-t/atlas/nope", {"json": {}}),
    ("POST", "/v1/models/nope/reconstruct", {"json": {"image": IMG64}}),
    ("POST", "/v1/models/..%2F..%2Fetc/reconstruct", {"json": {"image": IMG64}}),
    ("POST", "/v1/models/ae-t/generate", {"json": {"n": 2}}),
    (
        "POST",
        "/v1/models/ae-t/reconstruct",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
    ),
    ("POST", "/v1/models/ae-t/reconstruct", {"json": {"image": "###"}}),
    (
        "POST",
        "/v1/models/ae-t/reconstruct",
        {"json": {"image": base64.b64encode(b"<svg/>").decode()}},
    ),
    ("POST", "/v1/models/ae-t/reconstruct", {"json": {"image": IMG64, "colour": 1}}),
    (
        "POST",
        "/v1/models/ae-t/reconstruct",
        {"content": b"x", "headers": {"content-type": "text/plain"}},
    ),
    ("POST", "/v1/models/ae-t/reconstruct?format=gif", {"json": {"image": IMG64}}),
    ("POST", "/v1/models/gan-t/generate", {"json": {"n": 100000}}),
    ("POST", "/v1/models/vae-t/decode", {"json": {"latent": [1e30, 0, 0]}}),
    # not operation routes: FastAPI's own answers
    ("GET", "/v1/models/ae-t/reconstruct", {}),
    ("POST", "/v1/models/ae-t/unknown-op", {"json": {}}),
    ("POST", "/v1/models/ae-t/reconstruct/", {"json": {"image": IMG64}}),
    ("POST", "/v1/models/ae-t", {"json": {}}),
    ("POST", "/v1/models//reconstruct", {"json": {"image": IMG64}}),
]
COMPARED_HEADERS = ("content-type", "retry-after", "x-content-type-options", "x-latentserve-seed")


@pytest.fixture(scope="module")
def both(weights_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """The real app, and the same app with the dispatcher taken out of its middleware."""
    settings = Settings(weights_dir=weights_dir)
    plain = create_app(settings)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not OperationDispatcher]
    clients = [TestClient(create_app(settings), raise_server_exceptions=False),
               TestClient(plain, raise_server_exceptions=False)]  # fmt: skip
    for c in clients:
        c.__enter__()
        assert c.get("/health/ready").status_code in (200, 503)
    deadline = time.monotonic() + 60  # a bound for a hung start, not a speed
    while any(not c.app.state.latentserve.registry.loaded_once for c in clients):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the tiny models did not load"
        time.sleep(0.01)
    yield clients[0], clients[1]
    for c in clients:
        c.__exit__(None, None, None)


def comparable(r: Any) -> tuple[int, dict[str, str], Any]:
    headers = {k: r.headers.get(k) for k in COMPARED_HEADERS}
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if isinstance(body, dict):
            body.pop("timing_ms", None)
        return r.status_code, headers, body
    return r.status_code, headers, r.content


def test_every_operation_route_is_dispatched() -> None:
    spec = create_app(Settings(weights_dir=Path("/nonexistent"))).openapi()
    posted = {
        path.removeprefix("/v1/models/{name}/")
        for path, ops in spec["paths"].items()
        if path.startswith("/v1/models/{name}/") and "post" in ops
    }
    assert {"reconstruct", "atlas/decode", "atlas/locate"} <= posted
    assert set(operation_routes(*ROUTERS)) == posted


@pytest.mark.parametrize(("method", "path", "kwargs"), CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_dispatcher_answers_exactly_as_fastapi_routing(
    both: tuple[TestClient, TestClient],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, plain = both
    calls = []
    real_get_state = service.dispatch.get_state

    async def counting_get_state(request: Any) -> Any:
        calls.append(request.url.path)
        return await real_get_state(request)

    monkeypatch.setattr(service.dispatch, "get_state", counting_get_state)
    kwargs = {**kwargs, "follow_redirects": False}
    got, want = fast.request(method, path, **kwargs), plain.request(method, path, **kwargs)
    assert comparable(got) == comparable(want)
    assert got.status_code != 500
    operation = path.removeprefix("/v1/models/").partition("/")[2].split("?")[0]
    dispatched = method == "POST" and operation in operation_routes(*ROUTERS)
    dispatched = dispatched and "%2F" not in path and "//" not in path
    assert bool(calls) == dispatched, f"dispatcher {'skipped' if dispatched else 'took'} {path}"


def test_dispatched_requests_are_counted_by_route_template(
    both: tuple[TestClient, TestClient],
) -> None:
    fast, _ = both
    fast.post("/v1/models/ae-t/reconstruct", json={"image": IMG64})
    metrics = fast.get("/metrics").text
    assert 'route="/v1/models/{name}/reconstruct",status="200"' in metrics


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (1, 1), (5, 7, 3), (9, 4, 1)])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_encode_png_decodes_to_the_same_pixels(shape: tuple[int, ...], level: int) -> None:
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr, level)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG" and img.size == (shape[1], shape[0])
        assert img.mode == ("RGB" if len(shape) == 3 and shape[2] == 3 else "L")
        assert np.array_equal(
            np.asarray(img),
            arr.reshape(img.size[1], img.size[0], -1).squeeze(-1) if img.mode == "L" else arr,
        )


def test_png_bytes_compresses_and_rounds_like_the_model_output() -> None:
    x = torch.zeros(1, 28, 28)
    x[0, 7:21, 7:21] = 0.5  # 127.5 -> 128 (half to even)
    data = png_bytes(x, 0)  # the fastest level still compresses
    assert len(data) < 300  # a flat square compresses far below 28 * 29 raw bytes
    with Image.open(io.BytesIO(data)) as img:
        assert np.asarray(img)[14, 14] == 128 and np.asarray(img)[0, 0] == 0


@pytest.mark.parametrize(
    "arr", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)]
)
def test_encode_png_refuses_what_it_cannot_write(arr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        encode_png(arr)


def test_json_reply_images_are_pngs(both: tuple[TestClient, TestClient]) -> None:
    fast, _ = both
    r = fast.post("/v1/models/ae-t/reconstruct", json={"image": IMG64})
    url = r.json()["image"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert img.size == (28, 28) and img.mode == "L"
    assert json.loads(r.content)["shape"] == [1, 28, 28]
