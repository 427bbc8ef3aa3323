"""What the service knows about the request being served, beyond its body: when it started,
its deadline, which client sent it, and whether that client is still there.

Set by the operation dispatcher for each ``POST /v1/models/{name}/{operation}`` (a context
variable, so the operations read it without passing it through every call).

Deadlines: a request may send ``X-Request-Timeout: <seconds>`` (a positive number, at most
3600); without it, the server's default for the kind of work applies
(``LATENTSERVE_REQUEST_TIMEOUT_S``, ``LATENTSERVE_EXPENSIVE_TIMEOUT_S``). Work that cannot
finish in time is not started, a running search stops, and the client gets 504.

Disconnects: the HTTP protocol (protocol.py) calls ``scope["latentserve.disconnected"]`` when
the connection of an unanswered request is lost; what the request still waits for is then
cancelled (the engine drops it, a running search stops at its next step).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from .problems import InvalidInput

TIMEOUT_HEADER = b"x-request-timeout"
MAX_TIMEOUT_S = 3600.0


@dataclasses.dataclass(eq=False)
class RequestContext:
    client: str  # the peer address: the unit of per-client limits
    started: float = dataclasses.field(default_factory=time.monotonic)
    timeout_s: float | None = None  # from X-Request-Timeout; None: the server's default
    timeout_from: str = "X-Request-Timeout"  # what set timeout_s, for the 504's message
    gone: bool = False  # the client disconnected
    _on_gone: list[Callable[[], Any]] = dataclasses.field(default_factory=list)

    def deadline(self, default_s: float) -> float:
        return self.started + (self.timeout_s if self.timeout_s is not None else default_s)

    def budget_s(self, default_s: float) -> float:
        return self.timeout_s if self.timeout_s is not None else default_s

    def when_gone(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` if the client disconnects (at once if it already has)."""
        if self.gone:
            callback()
        else:
            self._on_gone.append(callback)

    def disconnected(self) -> None:
        self.gone = True
        callbacks, self._on_gone = self._on_gone, []
        for callback in callbacks:
            callback()


CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "latentserve_request", default=None
)


def from_scope(scope: MutableMapping[str, Any]) -> RequestContext:
    """The context of an ASGI request: its client and its X-Request-Timeout, checked."""
    client = scope.get("client")
    ctx = RequestContext(client=str(client[0]) if client else "unknown")
    for key, value in scope.get("headers", ()):
        if key == TIMEOUT_HEADER:
            ctx.timeout_s = parse_timeout(value.decode("latin-1"))
    return ctx


def parse_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise InvalidInput(
            f"X-Request-Timeout: give seconds as a number, such as 2.5; got {text[:40]!r}"
        ) from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidInput(
            f"X-Request-Timeout: must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, got {text[:40]}"
        )
    return seconds
