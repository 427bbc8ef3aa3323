"""One expensive request must not stall the others: lanes, cancellation, deadlines, per-client
limits. Every check waits for states (a batch running, a request queued), never for a guessed
time, and asserts orderings and counts rather than durations."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service import Settings
from service.batching import BatchEngine, DeadlineExceeded, should_stop

from .conftest import metric_sum, png, start, until
from .factories import write_tiny
from .test_deploy import ROOT, free_port, wait_ready


def run(coro):
    return asyncio.run(coro)


# --- the engine ---


def test_a_cancelled_request_is_never_run() -> None:
    gate, calls = threading.Event(), []

    def blocking(x: torch.Tensor) -> torch.Tensor:
        gate.wait(30)
        return x

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x

    dropped: list[str] = []

    async def main():
        engine = BatchEngine(max_batch_size=1, on_drop=dropped.append)
        await engine.start()
        first = asyncio.create_task(engine.run(blocking, torch.zeros(1)))
        while not engine.busy:
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(engine.run(counted, torch.zeros(3)))
        kept = asyncio.create_task(engine.run(counted, torch.zeros(2)))
        while engine.depth < 2:
            await asyncio.sleep(0.001)
        gone.cancel()  # its client left while it was queued
        await asyncio.sleep(0)
        gate.set()
        await first
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
        await engine.stop()

    run(main())
    assert calls == [2]  # the 3-row request never ran
    assert dropped == ["cancelled"]


def test_a_request_past_its_deadline_is_answered_without_running() -> None:
    gate, calls = threading.Event(), []

    def blocking(x: torch.Tensor) -> torch.Tensor:
        gate.wait(30)
        return x

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x

    async def main():
        engine = BatchEngine(max_batch_size=1)
        await engine.start()
        first = asyncio.create_task(engine.run(blocking, torch.zeros(1)))
        while not engine.busy:
            await asyncio.sleep(0.001)
        late = asyncio.create_task(engine.run(counted, torch.zeros(1), time.monotonic() + 0.05))
        while engine.depth < 1:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)  # its deadline passes while it is queued
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="while the request was queued"):
            await late
        with pytest.raises(DeadlineExceeded, match="before the request was queued"):
            await engine.run(counted, torch.zeros(1), time.monotonic() - 1)
        await engine.stop()

    run(main())
    assert calls == []


def test_a_running_search_sees_that_nobody_waits_any_more() -> None:
    steps: list[int] = []
    started = threading.Event()

    def search(x: torch.Tensor) -> torch.Tensor:
        started.set()
        n = 0
        while not should_stop() and n < 10_000_000:
            n += 1
        steps.append(n)
        return x

    async def main():
        engine = BatchEngine()
        await engine.start()
        task = asyncio.create_task(engine.run(search, torch.zeros(1)))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not steps:
            await asyncio.sleep(0.001)
        await engine.stop()

    run(main())
    assert 0 < steps[0] < 10_000_000  # it stopped at a step boundary, long before the end
    assert not should_stop()  # outside a batch


# --- the service ---


@pytest.fixture
def slow_gan(tmp_path: Path) -> Path:
    # big enough that 5000 inversion steps take minutes: only a deadline or a cancel ends them
    write_tiny(tmp_path / "gan-t", "gan", image_shape=(1, 64, 64), width=32)
    write_tiny(tmp_path / "ae-t", "ae")
    return tmp_path


def long_search(folder: Path, **overrides) -> TestClient:
    """GAN inversion that runs until its 60 s budget unless stopped."""
    return start(Settings(weights_dir=folder, inversion_steps=5000, inversion_restarts=1,
                          inversion_time_budget_s=60, **overrides))  # fmt: skip


def encode(client: TestClient, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/models/gan-t/encode", content=png(), headers={"content-type": "image/png", **headers}
    )


def search_running(
    pool: concurrent.futures.Executor, client: TestClient, timeout: str
) -> concurrent.futures.Future[httpx.Response]:
    """Send an encode whose search runs until its X-Request-Timeout; return once it runs."""
    lanes = client.app.state.latentserve.operations  # type: ignore[attr-defined]
    reply = pool.submit(encode, client, **{"x-request-timeout": timeout})
    until(lambda: lanes.expensive.busy, "the inversion runs")
    return reply


def test_cheap_requests_pass_a_running_expensive_one(slow_gan: Path) -> None:
    client = long_search(slow_gan)
    lanes = client.app.state.latentserve.operations  # type: ignore[attr-defined]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = search_running(pool, client, "3")
            for _ in range(5):  # cheap work keeps flowing beside it
                r = client.post("/v1/models/ae-t/reconstruct", content=png(),
                                headers={"content-type": "image/png"})  # fmt: skip
                assert r.status_code == 200
            assert not slow.done() and lanes.expensive.busy  # still searching
            assert slow.result().status_code == 504  # and stopped at its deadline
    finally:
        client.__exit__(None, None, None)


def test_deadlines_stop_running_and_queued_work_with_504(slow_gan: Path) -> None:
    client = long_search(slow_gan, max_expensive_per_client=4)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = search_running(pool, client, "1.5")
            queued = pool.submit(encode, client, **{"x-request-timeout": "0.5"})
            r = running.result(timeout=120)
            assert r.status_code == 504, r.text
            assert r.json()["detail"].startswith(
                "the request's deadline of 1.5 s (its X-Request-Timeout)"
            )
            assert queued.result(timeout=120).status_code == 504
        metrics = client.get("/metrics").text
        assert (
            'latentserve_dropped_requests_total{reason="deadline"} 1.0' in metrics
        )  # the queued one
        bad = encode(client, **{"x-request-timeout": "soon"})
        assert bad.status_code == 422 and "X-Request-Timeout: give seconds" in bad.json()["detail"]
        assert encode(client, **{"x-request-timeout": "0"}).status_code == 422
    finally:
        client.__exit__(None, None, None)


def test_one_client_cannot_fill_the_expensive_lane(slow_gan: Path) -> None:
    client = long_search(slow_gan, max_expensive_per_client=1)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = search_running(pool, client, "3")
            second = encode(client)
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            assert "already has 1 expensive requests running" in second.json()["detail"]
            big = client.post("/v1/models/gan-t/generate", json={"n": 200, "seed": 1})
            assert big.status_code == 429  # more rows than expensive_rows: the same lane
            small = client.post("/v1/models/gan-t/generate", json={"n": 4, "seed": 1})
            assert small.status_code == 200  # cheap: not limited
            assert first.result(timeout=120).status_code == 504
    finally:
        client.__exit__(None, None, None)


# --- a client that leaves, against a real server (the disconnect comes from the socket) ---


@pytest.fixture
def server(slow_gan: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(slow_gan), "LATENTSERVE_INVERSION_STEPS": "5000",
           "LATENTSERVE_INVERSION_RESTARTS": "1", "LATENTSERVE_INVERSION_TIME_BUDGET_S": "60"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def metric(base: str, line_start: str) -> float:
    return metric_sum(httpx.get(f"{base}/metrics").text, line_start)


def test_a_client_that_leaves_stops_its_search(server: str) -> None:
    for _ in range(4):  # four abandoned inversions, as the issue measured
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server}/v1/models/gan-t/encode", content=png(),
                       headers={"content-type": "image/png"}, timeout=0.3)  # fmt: skip
    # each was dropped or stopped: the lane comes free long before the 60 s budget of even one
    until(lambda: metric(server, 'latentserve_dropped_requests_total{reason="cancelled"}') >= 4,
          "the four are counted as cancelled")  # fmt: skip
    closed = (
        'latentserve_requests_total{model="gan-t",route="/v1/models/{name}/encode",status="499"}'
    )
    until(lambda: metric(server, closed) == 4, "the four are logged as 499, client closed")
    ran = metric(server, 'latentserve_batch_seconds_sum{model="gan-t",operation="encode"}')
    assert ran < 60  # what ran of them stopped early: not one full budget in all
    r = httpx.post(f"{server}/v1/models/ae-t/reconstruct", content=png(),
                   headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
    assert r.status_code == 200


def test_a_reload_loads_and_traces_beside_the_served_models(tmp_path: Path) -> None:
    write_tiny(tmp_path / "ae-t", "ae")
    client = start(Settings(weights_dir=tmp_path, api_key="k" * 24))
    state = client.app.state.latentserve  # type: ignore[attr-defined]
    registry = state.registry
    loading, release = threading.Event(), threading.Event()
    original = registry._load_one

    def slow_load(name, old):  # the new model's load takes as long as the test wants
        if name == "vae-new":
            loading.set()
            release.wait(60)
        return original(name, old)

    registry._load_one = slow_load
    try:
        write_tiny(tmp_path / "vae-new", "vae")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reload = pool.submit(client.post, "/v1/admin/reload", headers={"x-api-key": "k" * 24})
            assert loading.wait(60)
            for _ in range(5):  # served meanwhile, by the models already loaded
                r = client.post("/v1/models/ae-t/reconstruct", content=png(),
                                headers={"content-type": "image/png"})  # fmt: skip
                assert r.status_code == 200
            assert client.get("/v1/models/vae-new").status_code == 404  # not swapped in yet
            release.set()
            assert reload.result(timeout=60).json()["loaded"] == ["vae-new"]
        lm = registry.get("vae-new")
        # compiled before the swap: its first request waits for no export or trace
        for method in ("encode_distribution", "decode", "reconstruct"):
            assert state.operations.compiled(lm, method).state == "onnxruntime", method
    finally:
        registry._load_one = original
        client.__exit__(None, None, None)
