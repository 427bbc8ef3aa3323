"""``python -m service``: start uvicorn with the settings from the environment."""

from __future__ import annotations

import atexit
import contextlib
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
        fork_workers_after_imports()
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


def fork_workers_after_imports() -> None:
    """Import torch, the service and the ONNX exporter's modules here, in the supervisor, and
    have uvicorn fork the workers from it instead of spawning fresh interpreters: the imports
    (about 280 MB of a process's memory) are then shared copy-on-write. ``gc.freeze`` moves
    what was imported out of the collector's sight, whose passes would otherwise write to
    (and so copy) every page of it in each worker. Nothing here runs a model; the one thread
    the imports start is OpenBLAS's (numpy), which re-creates its pool in a forked child.
    ONNX Runtime, whose import starts a thread of its own, is left to the workers. Measured
    (``bench.first_requests.one_server(True, 2)``, every shipped model, after one request of
    each operation): 1,187 MB PSS spawned; forked after importing the service 1,092, after
    the exporter's modules too 1,019.

    uvicorn has no setting for this: its supervisor starts workers through
    ``uvicorn._subprocess.spawn``, a multiprocessing context, replaced here by the fork one
    (tests/test_workers.py checks that the workers are forks; LATENTSERVE_WORKER_START=spawn
    keeps uvicorn's own way)."""
    import gc
    import multiprocessing

    import uvicorn._subprocess

    from . import app  # noqa: F401  # torch, the models and the service

    # what a worker's first ONNX export imports, about 50 MB (sympy comes with the last one;
    # a torch built without distributed support has none)
    for module in ("onnx", "torch.onnx", "torch.distributed.tensor"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)

    if not isinstance(
        getattr(uvicorn._subprocess, "spawn", None), multiprocessing.context.BaseContext
    ):
        raise RuntimeError(
            "this uvicorn starts its workers another way; set LATENTSERVE_WORKER_START=spawn"
        )
    gc.collect()
    gc.freeze()
    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]


if __name__ == "__main__":
    raise SystemExit(main())
