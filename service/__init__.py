"""latentserve's REST service: ``python -m service`` or ``create_app(Settings())``.

The names are imported on first use: with several workers, uvicorn's supervisor process
imports this package but never serves, and must not pay for torch (about 250 MB resident).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .config import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
