"""Load (and compile) the models once, in the supervisor, before it forks the workers.

With several workers forked from one supervisor (``LATENTSERVE_WORKER_START=fork``, the
default), ``python -m service`` calls ``preload`` before uvicorn forks: the supervisor loads
every model and, with ``LATENTSERVE_TRACE_AT_START``, compiles every call the workers' warm-up
would compile (ONNX Runtime sessions, traces), on its one thread. Each worker then starts
from those objects instead of making its own: pages nobody writes to stay shared
copy-on-write, so the weights, the sessions and what the exporter left behind are in memory
once, not once per worker. A worker's registry keeps a preloaded model while its files are
unchanged (registry.py compares modification times, as a reload does), and its operations
start from the preloaded compiled calls (inference.py); a model whose files changed since,
or a reload, loads and compiles in the worker as before. A worker the supervisor starts
again after a crash is forked from the same preloaded state (and loads what changed since);
the supervisor keeps the preloaded versions for that, so after a reload that replaced a
model its old version stays in memory once, in the supervisor alone.

Measured (``python -m bench.first_requests``, every shipped model, two workers, after one
request of every operation; bench/results/first_requests.md): with TRACE_AT_START 536 MB PSS
(each worker compiling its own: 1,014), without it 569 (764); ready 10.8 s (10.0). Since
``auto`` times the engines in the child and the GAN generators run traced: 579 MB, 12.4 s.

Only with one thread per worker (``LATENTSERVE_TORCH_THREADS=1``, the default): a thread pool
made before a fork (ONNX Runtime's intra-op pool, OpenMP's) does not exist in the child, and
its first call there would wait for ever. With more threads nothing is preloaded. ONNX
Runtime's import also starts a thread, which a forked child that leaves through the normal
interpreter exit waits for ever on; multiprocessing's forked processes (uvicorn's workers)
leave through ``os._exit``, which does not (tests/test_preloading.py stops them).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import select
import signal
import time

import torch

from .batching import BatchEngine
from .config import Settings
from .engines import CHOICES, Choice, EngineCall
from .inference import Operations
from .memory import return_freed_memory
from .onnx_engine import GRAPHS, providers_for
from .registry import LoadedModel, ModelRegistry

log = logging.getLogger("latentserve.preloading")
#: a child that has not handed its graphs over by then is stopped, and the supervisor exports
#: them itself (the shipped models take ~5 s)
CHILD_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Preloaded:
    """What the supervisor made for settings with this ``fingerprint``."""

    fingerprint: tuple[object, ...]
    models: dict[str, LoadedModel]
    compiled: dict[LoadedModel, dict[str, EngineCall]]


_preloaded: Preloaded | None = None


def fingerprint(settings: Settings) -> tuple[object, ...]:
    """The settings that decide what is loaded and how it is compiled."""
    s = settings
    return (s.weights_dir.resolve(), tuple(s.models), s.engine, s.device, s.torch_threads,
            s.trace_at_start)  # fmt: skip


def preload(settings: Settings) -> Preloaded | None:
    """Load every model (and compile its calls with ``trace_at_start``) in this process, for
    the workers it will fork; None where nothing can be shared (more than one thread)."""
    global _preloaded
    if settings.torch_threads != 1:
        log.info("not preloading: thread pools made before a fork are missing in the workers "
                 "(LATENTSERVE_TORCH_THREADS=%d)", settings.torch_threads)  # fmt: skip
        return None
    started = time.perf_counter()
    torch.set_num_threads(1)
    registry = ModelRegistry(settings.weights_dir, settings.models, settings.torch_threads)
    registry.load_all()
    compiled: dict[LoadedModel, dict[str, EngineCall]] = {}
    if compiles_ahead(settings):
        models = list(registry.models.values())
        try:
            graphs, engines = exported_in_child(settings, models)
        except (OSError, RuntimeError, ValueError) as exc:  # then exported here
            log.warning("exporting in a child process failed (%s); exporting here", exc)
            graphs, engines = {}, {}
        with GRAPHS.given(graphs), CHOICES.given(engines):
            compiled = compile_calls(settings, models)
    _preloaded = Preloaded(fingerprint(settings), dict(registry.models), compiled)
    gc.collect()
    return_freed_memory()  # the handed-over graphs and the loading's garbage (memory.py)
    log.info("preloaded %d models and %d compiled calls for the workers in %.1f s",
             len(registry.models), sum(map(len, compiled.values())),
             time.perf_counter() - started)  # fmt: skip
    return _preloaded


def compiles_ahead(settings: Settings) -> bool:
    """Whether preloading compiles the calls too (else each worker does, on first use). Not
    for CUDA: a CUDA context made before a fork cannot be used in the child."""
    return (
        settings.torch_threads == 1
        and settings.trace_at_start
        and settings.engine != "torch"
        and (settings.device == "cpu" or "CUDAExecutionProvider" not in providers_for(settings.device))
    )  # fmt: skip


def compile_calls(
    settings: Settings, models: list[LoadedModel]
) -> dict[LoadedModel, dict[str, EngineCall]]:
    """What the workers' warm-up compiles, compiled on this thread."""
    lane = BatchEngine(1, 0.0, 1, 1)  # never started: the calls run on this thread
    operations = Operations(lane, settings)
    operations.compile_here(models)
    return operations.compiled_calls()


def exported_in_child(
    settings: Settings, models: list[LoadedModel]
) -> tuple[dict[str, bytes], dict[str, Choice]]:
    """``compile_calls`` in a forked child process: the ONNX graphs of the calls ONNX Runtime
    runs, and each call's engine with the times it was chosen by, by call key.

    The exporter imports about 53 MB of modules (onnx, torch.onnx, sympy) and leaves ~22 MB
    of garbage in the heap; in the supervisor, all of it would be part of every worker's
    memory. The child compiles as the supervisor will (one more pass: ready comes later by
    that much), with ``auto`` timing the engines (engines.py); the supervisor then builds
    each call's chosen engine alone, untimed. The child hands its results over through a
    pipe (an 8-byte header length, a JSON header {"graphs": [[key, size], ...], "engines":
    {key: {"engine": ..., "timings": {...}}}}, the graphs' bytes) and leaves through
    ``os._exit``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            logging.disable(logging.WARNING)  # the supervisor's own pass says what failed
            with GRAPHS.recording() as exported, CHOICES.recording() as engines:
                compile_calls(settings, models)
            graphs = {
                k: g
                for k, g in exported.items()
                if k in engines and engines[k]["engine"] == "onnxruntime"
            }
            sizes = [[key, len(graph)] for key, graph in graphs.items()]
            header = json.dumps({"graphs": sizes, "engines": engines}).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(len(header).to_bytes(8, "big") + header)
                for graph in graphs.values():
                    pipe.write(graph)
            code = 0
        finally:
            os._exit(code)  # not the interpreter's exit (the module's docstring says why)
    os.close(write_end)
    try:
        data = _read_all(read_end, time.monotonic() + CHILD_TIMEOUT_S)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise RuntimeError(f"the exporting child did not finish in {CHILD_TIMEOUT_S} s") from None
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the exporting child exited with {os.waitstatus_to_exitcode(status)}")
    size = int.from_bytes(data[:8], "big")
    header = json.loads(data[8 : 8 + size])
    graphs, offset = {}, 8 + size
    for key, length in header["graphs"]:
        graphs[key] = data[offset : offset + length]
        offset += length
    if offset != len(data):
        raise ValueError(f"the exporting child sent {len(data)} bytes, its header said {offset}")
    return graphs, header["engines"]


def _read_all(fd: int, deadline: float) -> bytes:
    """Everything the other end writes until it closes, by ``deadline`` (TimeoutError)."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def preloaded_for(settings: Settings) -> Preloaded | None:
    """What this process's supervisor preloaded, if it was for these settings."""
    if _preloaded is None or _preloaded.fingerprint != fingerprint(settings):
        return None
    return _preloaded
