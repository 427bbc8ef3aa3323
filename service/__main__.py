"""``python -m service``: start uvicorn with the settings from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .config import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"latentserve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
