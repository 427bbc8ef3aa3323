"""``python -m service``: start uvicorn with the settings from the environment."""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import tempfile
from typing import Any

import uvicorn
from pydantic import ValidationError

from .config import Settings
from .protocol import http_protocol


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"latentserve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # one process: pass the app itself; several: uvicorn's supervisor calls the factory in
    # each worker, which reads the same LATENTSERVE_ environment
    app: Any = "service.app:create_app"
    if settings.workers == 1:
        from .app import create_app

        app = create_app(settings)
    elif settings.worker_start == "fork":
        fork_workers_after_imports(settings)
    if settings.workers > 1 and settings.reload_signal_file is None:
        # the workers read their settings from this environment: give them a shared file
        # through which an admin reload in one of them reaches all (reloading.py)
        fd, name = tempfile.mkstemp(prefix="latentserve-reload-")
        os.close(fd)
        os.environ["LATENTSERVE_RELOAD_SIGNAL_FILE"] = name
        atexit.register(os.unlink, name)
    uvicorn.run(
        app,
        # uvicorn's httptools protocol, one write per reply, with the slow-client limits
        # (create_app configures them in each worker)
        http=http_protocol(),
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        proxy_headers=True,  # behind a trusted proxy, the client is who X-Forwarded-For names
        forwarded_allow_ips=settings.forwarded_allow_ips,
        access_log=False,
    )
    return 0


def fork_workers_after_imports(settings: Settings) -> None:
    """Import torch, the service and the ONNX exporter's modules here, in the supervisor,
    preload the models (preloading.py: with TRACE_AT_START their compiled calls too), and have
    uvicorn fork the workers from it instead of spawning fresh interpreters: the imports
    (about 300 MB of a process's memory), the weights and the ONNX Runtime sessions are then
    shared copy-on-write. ``gc.freeze`` moves all of it out of the collector's sight, whose
    passes would otherwise write to (and so copy) every page of it in each worker. The
    threads the imports start: OpenBLAS's (numpy), which re-creates its pool in a forked
    child, and ONNX Runtime's (when preloading compiled), which forked workers never wait on
    since they leave through ``os._exit``. Measured (``bench.first_requests.one_server(True,
    2)``, every shipped model, after one request of each operation): 1,187 MB PSS spawned;
    forked after importing the service 1,092, after the exporter's modules too 1,019, with
    the models preloaded and compiled before the fork 536 (579 since ``auto`` runs the GAN
    generators as traces, whose TorchScript runtime the supervisor then holds).

    uvicorn has no setting for this: its supervisor starts workers through
    ``uvicorn._subprocess.spawn``, a multiprocessing context, replaced here by the fork one
    (tests/test_workers.py checks that the workers are forks; LATENTSERVE_WORKER_START=spawn
    keeps uvicorn's own way, and loads the models in each worker)."""
    import gc
    import multiprocessing

    import uvicorn._subprocess

    from . import app  # noqa: F401  # torch, the models and the service
    from .memory import return_freed_memory
    from .preloading import compiles_ahead, preload

    if not compiles_ahead(settings):
        # what a worker's first ONNX export imports, about 13 MB; where the calls are
        # compiled ahead, a child process exports them (preloading.py) and nobody here needs it
        for module in ("onnx", "torch.onnx"):
            importlib.import_module(module)

    if not isinstance(
        getattr(uvicorn._subprocess, "spawn", None), multiprocessing.context.BaseContext
    ):
        raise RuntimeError(
            "this uvicorn starts its workers another way; set LATENTSERVE_WORKER_START=spawn"
        )
    try:  # the models (and their compiled calls), shared by the workers too (preloading.py)
        preload(settings)
    except Exception:  # the workers load their own, as without preloading
        logging.getLogger("latentserve").exception("preloading the models failed")
    gc.collect()
    # the heap's free pages go back before the fork: a worker's malloc would reuse (and so
    # copy) them, and the supervisor's copies would then count as its own (memory.py)
    return_freed_memory()
    gc.freeze()
    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]


if __name__ == "__main__":
    raise SystemExit(main())
