"""``python -m service``: start uvicorn with the settings from the environment."""

from __future__ import annotations

import atexit
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
    # one process: pass the app itself; several: uvicorn's supervisor imports the factory in
    # each worker, which reads the same LATENTSERVE_ environment. The supervisor itself never
    # imports the app (nor torch): that keeps about 250 MB out of it.
    app: Any = "service.app:create_app"
    if settings.workers == 1:
        from .app import create_app

        app = create_app(settings)
    elif settings.reload_signal_file is None:
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


if __name__ == "__main__":
    raise SystemExit(main())
