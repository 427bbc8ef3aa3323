"""With several workers, one killed by the OS (SIGKILL, as the OOM killer does) is replaced and
serves again; the service answers throughout. What a client of the dead worker sees: its
connection drops (a read error, or a reply cut short), so it may retry; every other request
succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch

from bench.__main__ import descendants

from .conftest import png, until
from .factories import write_tiny
from .test_deploy import ROOT, free_port, wait_ready


def workers(main_pid: int) -> set[int]:
    """The worker processes: python children of the supervisor (not the resource tracker)."""
    found = set()
    for pid in descendants(main_pid)[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.resource_tracker" not in cmdline:
            found.add(pid)
    return found


def stop_cleanly(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server; it must exit 0 within a minute (else it is killed and this fails)."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(tmp_path: Path) -> None:
    write_tiny(tmp_path / "ae-t", "ae")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(tmp_path), "LATENTSERVE_WORKERS": "2"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    dropped: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(base_url=base, timeout=30) as client:
                    while not stop.is_set():
                        r = client.post("/v1/models/ae-t/reconstruct", content=png(),
                                        headers={"content-type": "image/png"})  # fmt: skip
                        statuses.append(r.status_code)
            except httpx.TransportError as exc:  # a connection to the worker that died
                dropped.append(type(exc).__name__)

    try:
        wait_ready(f"{base}/health/ready")
        until(lambda: len(workers(proc.pid)) == 2, "two workers")
        before = workers(proc.pid)
        # forked from the supervisor after its imports (service/__main__.py), not spawned:
        # a fork keeps the supervisor's command line, a spawned worker has multiprocessing's
        supervisor = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert {Path(f"/proc/{pid}/cmdline").read_bytes() for pid in before} == {supervisor}
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        until(lambda: len(statuses) >= 50, "load on both workers")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        until(lambda: victim not in workers(proc.pid), "the worker is gone")
        ready = httpx.get(f"{base}/health/ready", timeout=30)
        assert ready.status_code == 200  # the other worker serves meanwhile
        until(lambda: len(workers(proc.pid) - before) == 1 and len(workers(proc.pid)) == 2,
              "a new worker in its place")  # fmt: skip
        wait_ready(f"{base}/health/ready")
        served = len(statuses)
        until(lambda: len(statuses) >= served + 100, "serving on after the replacement")
        stop.set()
        for t in threads:
            t.join(30)
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        # only the connections open on the dead worker broke: at most one per load thread
        assert len(dropped) <= 4, dropped
        assert proc.poll() is None  # the supervisor itself never went down
        # the replacement is a fork too
        (new,) = workers(proc.pid) - before
        assert Path(f"/proc/{new}/cmdline").read_bytes() == supervisor
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_forking_workers_refuses_an_unknown_uvicorn_and_sets_the_fork_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import multiprocessing

    import uvicorn._subprocess

    from service import preloading
    from service.__main__ import fork_workers_after_imports
    from service.config import Settings

    monkeypatch.setattr(preloading, "_preloaded", None)
    settings = Settings(weights_dir=tmp_path)  # nothing to preload
    monkeypatch.delattr(uvicorn._subprocess, "spawn")
    with pytest.raises(RuntimeError, match="LATENTSERVE_WORKER_START=spawn"):
        fork_workers_after_imports(settings)
    monkeypatch.setattr(uvicorn._subprocess, "spawn", multiprocessing.get_context("spawn"),
                        raising=False)  # fmt: skip
    threads = torch.get_num_threads()
    try:
        fork_workers_after_imports(settings)
        assert uvicorn._subprocess.spawn.get_start_method() == "fork"  # type: ignore[attr-defined]
    finally:
        import gc

        gc.unfreeze()
        torch.set_num_threads(threads)  # preloading set one thread for this process


def test_spawned_workers_still_serve_when_asked_for(tmp_path: Path) -> None:
    """LATENTSERVE_WORKER_START=spawn: uvicorn's own fresh interpreters, which serve alike."""
    write_tiny(tmp_path / "ae-t", "ae")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(tmp_path), "LATENTSERVE_WORKERS": "2",
           "LATENTSERVE_WORKER_START": "spawn"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready")
        until(lambda: len(workers(proc.pid)) == 2, "two workers")
        for pid in workers(proc.pid):
            assert b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        r = httpx.post(f"{base}/v1/models/ae-t/reconstruct", content=png(),
                       headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
        assert r.status_code == 200
    finally:
        stop_cleanly(proc)
