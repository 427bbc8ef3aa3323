"""Shared fixtures: a weights folder of tiny seeded models and a client for an app on it."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app

from .factories import write_tiny

TINY_WEIGHTS = {
    "ae-t": "ae",
    "dae-t": "dae",
    "vae-t": "vae",
    "gan-t": "gan",
    "cvae-t": "cvae",
    "cgan-t": "cgan",
    "stacked-t": "stacked-ae",
    "sparse-t": "sparse-ae",
    "classifier-t": "classifier",
    "pixelcnn-t": "pixelcnn",
    "made-t": "made",
    "rbm-t": "rbm",
}
API_KEY = "k" * 24


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    for name, family in TINY_WEIGHTS.items():
        projections = ("pca", "tsne") if name == "vae-t" else ("pca",)
        write_tiny(root / name, family, atlas=projections, seed=1)
    return root


def start(app_settings: Settings) -> TestClient:
    client = TestClient(create_app(app_settings), raise_server_exceptions=False)
    client.__enter__()
    deadline = time.monotonic() + 60  # a bound for a hung start, not a speed
    while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
        if client.app.state.latentserve.registry.loaded_once:  # type: ignore[attr-defined]
            break
        time.sleep(0.01)
    return client


@pytest.fixture(scope="session")
def client(weights_dir: Path) -> Iterator[TestClient]:
    c = start(
        Settings(weights_dir=weights_dir, api_key=API_KEY, cors_origins=["http://allowed.example"])
    )
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def live_url(weights_dir: Path) -> Iterator[str]:
    """A real HTTP server (uvicorn, in a thread) on the tiny models: for the clients that
    speak HTTP themselves (tritonclient, latentserve.client, generated clients)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(weights_dir=weights_dir, port=port, trace_at_start=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    until(lambda: server.started, "the live server started")
    registry = app.state.latentserve.registry
    until(lambda: registry.loaded_once, "the live server loaded its models")
    yield url
    server.should_exit = True
    thread.join(30)


def until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Wait for a state; the bound only stops a hung test, it is not a speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def metric_sum(text: str, prefix: str, contains: str = "") -> float:
    """The sum of the Prometheus samples in ``text`` whose line starts with ``prefix``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and contains in line)  # fmt: skip


def png(
    side: int = 28, mode: str = "L", value: int | tuple[int, ...] = 200, fmt: str = "PNG"
) -> bytes:
    """A test image: a bright square on a dark background."""
    arr = np.zeros((side, side) if mode == "L" else (side, side, len(mode)), dtype=np.uint8)
    arr[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = value
    buffer = io.BytesIO()
    Image.fromarray(arr, mode).save(buffer, format=fmt)
    return buffer.getvalue()
