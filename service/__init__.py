"""latentserve's REST service: ``python -m service`` or ``create_app(Settings())``."""

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
