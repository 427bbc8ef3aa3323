"""Models (and their compiled calls) loaded once by the supervisor serve in the workers it
forks: the same objects, kept while their files are unchanged, reloaded where they changed;
nothing is preloaded where it could not be shared or for other settings; and a server with
two workers forked from a preloading supervisor serves and stops."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service import preloading
from service.config import Settings

from .conftest import png, start, until
from .factories import write_tiny
from .test_deploy import ROOT, free_port, wait_ready
from .test_workers import stop_cleanly, workers


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    """An app made in this process, as a forked worker makes its own, running its lifespan."""
    client = start(settings)
    until(lambda: client.get("/health/ready").status_code == 200, "ready")
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(preloading, "_preloaded", None)  # this test's preloading only
    write_tiny(tmp_path / "ae-t", "ae")
    write_tiny(tmp_path / "gan-t", "gan")
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # preload sets one thread for this process


def test_a_worker_serves_the_preloaded_models_and_compiled_calls(weights: Path) -> None:
    settings = Settings(weights_dir=weights, trace_at_start=True)
    made = preloading.preload(settings)
    assert made is not None and set(made.models) == {"ae-t", "gan-t"}
    ae, gan = made.models["ae-t"], made.models["gan-t"]
    compiled = {lm.name: {m: c.state for m, c in calls.items()} for lm, calls in made.compiled.items()}  # fmt: skip
    # every call warm-up compiles, the GAN's inversion objective included, by ONNX Runtime
    assert compiled == {
        "ae-t": {"encode": "onnxruntime", "decode": "onnxruntime", "reconstruct": "onnxruntime"},
        "gan-t": {"decode": "onnxruntime", "inversion_objective": "onnxruntime"},
    }
    with serving(settings) as client:  # what a forked worker does with the same settings
        state = client.app.state.latentserve  # type: ignore[attr-defined]
        assert state.registry.models["ae-t"] is ae and state.registry.models["gan-t"] is gan
        assert state.operations.compiled(ae, "reconstruct") is made.compiled[ae]["reconstruct"]
        r = client.post("/v1/models/ae-t/reconstruct", content=png(),
                        headers={"content-type": "image/png"})  # fmt: skip
        assert r.status_code == 200
        r = client.post("/v1/models/gan-t/encode", content=png(),
                        headers={"content-type": "image/png"})  # fmt: skip
        assert r.status_code == 200, r.text


def test_the_graphs_are_exported_by_a_child_process_and_only_there(
    weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor compiles from graphs a forked child exported (it never exports
    itself); a child that takes too long is stopped; where the child failed, the supervisor
    exports itself, with a warning."""
    import onnx

    import service.onnx_engine as onnx_engine

    supervisor, export = os.getpid(), onnx_engine.export_graph

    def only_in_a_child(*args: object) -> bytes:
        assert os.getpid() != supervisor, "exported in the supervisor"
        return export(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_engine, "export_graph", only_in_a_child)
    settings = Settings(weights_dir=weights, trace_at_start=True)
    made = preloading.preload(settings)
    assert made is not None
    states = {c.label: c.state for calls in made.compiled.values() for c in calls.values()}
    assert set(states.values()) == {"onnxruntime"} and len(states) == 5, states
    # the child timed the engines (auto); the supervisor built its choice with its timings
    for calls in made.compiled.values():
        assert all(set(c.timings) >= {"eager", "onnxruntime"} for c in calls.values())
    graphs, engines = preloading.exported_in_child(settings, list(made.models.values()))
    # by call and input shapes (the tiny ae's code has 4 numbers, the GAN's 5)
    keys = {
        "ae-t.encode ((1, 28, 28),)", "ae-t.reconstruct ((1, 28, 28),)", "ae-t.decode ((4,),)",
        "gan-t.decode ((5,),)", "gan-t.inversion_objective ((5,), (1, 28, 28))",
    }  # fmt: skip
    assert set(graphs) == keys
    assert {k: choice["engine"] for k, choice in engines.items()} == dict.fromkeys(
        keys, "onnxruntime"
    )
    for graph in graphs.values():
        onnx.checker.check_model(onnx.load_from_string(graph))

    monkeypatch.setattr(preloading, "CHILD_TIMEOUT_S", 0)  # a child that takes too long
    with pytest.raises(RuntimeError, match="the exporting child did not finish in 0 s"):
        preloading.exported_in_child(settings, list(made.models.values()))

    def failing(*args: object) -> tuple[dict[str, bytes], dict[str, object]]:
        raise RuntimeError("the exporting child exited with 1")

    monkeypatch.setattr(onnx_engine, "export_graph", export)
    monkeypatch.setattr(preloading, "exported_in_child", failing)
    with caplog.at_level(logging.WARNING, "latentserve.preloading"):
        made = preloading.preload(settings)
    assert made is not None and sum(map(len, made.compiled.values())) == 5
    assert "exporting in a child process failed (the exporting child exited with 1)" in caplog.text


def test_a_model_whose_files_changed_since_preloading_loads_again(weights: Path) -> None:
    settings = Settings(weights_dir=weights)
    made = preloading.preload(settings)
    assert made is not None and made.compiled == {}  # no compiling without TRACE_AT_START
    config = weights / "ae-t" / "config.json"
    os.utime(config, (config.stat().st_atime, config.stat().st_mtime + 10))
    with serving(settings) as client:
        models = client.app.state.latentserve.registry.models  # type: ignore[attr-defined]
        assert models["gan-t"] is made.models["gan-t"]
        assert models["ae-t"] is not made.models["ae-t"]  # its files are newer


def test_nothing_is_compiled_ahead_for_cuda_or_without_trace_at_start(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert preloading.compiles_ahead(Settings(weights_dir=weights, trace_at_start=True))
    assert not preloading.compiles_ahead(Settings(weights_dir=weights))
    assert not preloading.compiles_ahead(Settings(weights_dir=weights, trace_at_start=True, engine="torch"))  # fmt: skip
    monkeypatch.setattr(preloading, "providers_for", lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    settings = Settings(weights_dir=weights, trace_at_start=True)  # device auto: CUDA here
    assert not preloading.compiles_ahead(settings)
    made = preloading.preload(settings)
    assert made is not None and set(made.models) == {"ae-t", "gan-t"} and made.compiled == {}
    assert preloading.compiles_ahead(Settings(weights_dir=weights, trace_at_start=True, device="cpu"))  # fmt: skip


def test_nothing_is_preloaded_with_several_threads_or_used_for_other_settings(
    weights: Path,
) -> None:
    assert preloading.preload(Settings(weights_dir=weights, torch_threads=2)) is None
    assert preloading.preloaded_for(Settings(weights_dir=weights, torch_threads=2)) is None
    made = preloading.preload(Settings(weights_dir=weights))
    assert preloading.preloaded_for(Settings(weights_dir=weights)) is made
    for other in ({"engine": "torch"}, {"models": ["ae-t"]}, {"trace_at_start": True}):
        assert preloading.preloaded_for(Settings(weights_dir=weights, **other)) is None  # type: ignore[arg-type]
    with serving(Settings(weights_dir=weights, models=["ae-t"])) as client:
        models = client.app.state.latentserve.registry.models  # type: ignore[attr-defined]
        assert set(models) == {"ae-t"} and models["ae-t"] is not made.models["ae-t"]


def test_two_workers_forked_from_a_preloading_supervisor_serve_and_stop(weights: Path) -> None:
    """ONNX Runtime is imported (its import starts a thread) and its sessions made before the
    fork; the workers answer with them and leave on SIGTERM (a forked process that left
    through the interpreter's normal exit would wait for that thread for ever)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_WEIGHTS_DIR": str(weights), "LATENTSERVE_WORKERS": "2",
           "LATENTSERVE_TRACE_AT_START": "true", "LATENTSERVE_LOG_LEVEL": "info"}  # fmt: skip
    log = weights / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=weights,
                                stdout=subprocess.DEVNULL, stderr=out)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready")
        until(lambda: len(workers(proc.pid)) == 2, "two workers")
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(6):  # both workers, most likely
                for model, op in (("ae-t", "reconstruct"), ("gan-t", "encode")):
                    r = client.post(f"/v1/models/{model}/{op}", content=png(),
                                    headers={"content-type": "image/png"})  # fmt: skip
                    assert r.status_code == 200, r.text
    finally:
        stop_cleanly(proc)
    text = log.read_text()
    assert "preloaded 2 models and 5 compiled calls" in text
    assert "model calls compiled ahead of traffic" in text  # the workers' warm-up found them
