"""SIGTERM: stop accepting, finish what is in flight, exit within the grace period."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .conftest import metric_sum
from .factories import write_tiny
from .test_deploy import ROOT, free_port, wait_ready

# Generous: the 8 requests below take about 18 s on a slow 2-core host, and a request still
# running when the grace period ends is cancelled (that would be the server's fault only if
# the period had been respected, which the exit-time assertion checks).
GRACE_S = 60


def wait_all_accepted(base: str, n: int) -> None:
    """Wait for the state "all n requests accepted, some still queued": each request runs
    alone (64 rows > the batch size of 8), so queued + answered = n - 1 with one queued or
    more means the one left is running and none is still on its way in. A state read from
    the server's metrics, so a slow host only waits longer."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        queued = metric_sum(text, "latentserve_queue_depth")
        answered = (
            metric_sum(text, "latentserve_requests_total", 'route="/v1/models/{name}/generate"') - 1
        )
        if queued >= 1 and queued + answered == n - 1:
            return
        assert answered < n - 1, "the requests finished before the signal could find them running"
        time.sleep(0.02)
    raise AssertionError("the requests were never all accepted")


def test_sigterm_finishes_every_accepted_request(tmp_path: Path) -> None:
    # a model slow enough that requests are still running when the signal arrives
    write_tiny(tmp_path / "slow", "gan", image_shape=(3, 128, 128), width=32)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(tmp_path), "LATENTSERVE_GRACEFUL_TIMEOUT_S": str(GRACE_S),
           "LATENTSERVE_MAX_BATCH_SIZE": "8", "LATENTSERVE_MAX_EXPENSIVE_PER_CLIENT": "8"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready")

        def generate(seed: int) -> tuple[int, float]:
            r = httpx.post(
                f"{base}/v1/models/slow/generate", json={"n": 64, "seed": seed}, timeout=60
            )
            return r.status_code, time.monotonic()

        assert generate(99)[0] == 200  # traced and warm: the 8 below only queue and run
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(generate, i) for i in range(8)]
            wait_all_accepted(base, 8)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        if [status for status, _ in results] != [200] * 8:
            proc.kill()
            raise AssertionError(f"{results}\n{proc.communicate(timeout=10)[0][-1500:]}")
        assert max(done for _, done in results) > started, "nothing was in flight at SIGTERM"
        proc.wait(timeout=30)
        assert time.monotonic() - started < GRACE_S + 5
        try:
            httpx.get(f"{base}/health/live", timeout=1)
            raise AssertionError("the server still accepts connections after SIGTERM")
        except httpx.ConnectError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
    assert "Application shutdown complete." in out and "Traceback" not in out, out[-2000:]


def start_server(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(tmp_path), **settings}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health/ready")
    return proc, base


def sigterm_under_keep_alive_load(tmp_path: Path, clients: int = 16) -> list[str]:
    """Clients loop reconstruct on keep-alive connections; SIGTERM after 200 replies. The
    outcome of every request: its status, "refused" (a new connection after the server
    closed: nothing was lost), or the error that cut it off."""
    from .conftest import png

    proc, base = start_server(tmp_path)
    outcomes: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/models/ae-t/reconstruct", content=png(),
                                    headers={"content-type": "image/png"})  # fmt: skip
                    outcomes.append(str(r.status_code))
                except httpx.ConnectError:
                    outcomes.append("refused")
                    return
                except httpx.TransportError as exc:
                    outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        while len(outcomes) < 200:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        if proc.poll() is None:
            proc.kill()
    return outcomes


def test_keep_alive_clients_lose_no_request_to_sigterm(tmp_path: Path) -> None:
    """Three times over: every request sent on an open connection is answered (200, or 503
    with Retry-After), none is cut off."""
    write_tiny(tmp_path / "ae-t", "ae")
    for _ in range(3):
        outcomes = sigterm_under_keep_alive_load(tmp_path)
        lost = {o: outcomes.count(o) for o in set(outcomes) - {"200", "503", "refused"}}
        assert lost == {}, lost


def test_work_still_running_when_the_grace_period_ends_gets_503(tmp_path: Path) -> None:
    write_tiny(tmp_path / "gan-t", "gan", image_shape=(1, 64, 64), width=32)
    proc, base = start_server(tmp_path, LATENTSERVE_GRACEFUL_TIMEOUT_S="1",
                              LATENTSERVE_INVERSION_STEPS="5000", LATENTSERVE_INVERSION_RESTARTS="1",
                              LATENTSERVE_INVERSION_TIME_BUDGET_S="60")  # fmt: skip
    from .conftest import png

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reply = pool.submit(httpx.post, f"{base}/v1/models/gan-t/encode", content=png(),
                                headers={"content-type": "image/png"}, timeout=120)  # fmt: skip
            until_running = time.monotonic() + 60
            while "latentserve_queue_depth" not in httpx.get(f"{base}/metrics").text:
                assert time.monotonic() < until_running
            time.sleep(0.5)  # the search is under way (it runs for up to 60 s)
            proc.send_signal(signal.SIGTERM)
            r = reply.result(timeout=120)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "shutting down" in r.json()["detail"]
        out = proc.communicate(timeout=60)[0]
        assert "Traceback" not in out, out[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
