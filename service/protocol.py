"""uvicorn's HTTP protocol, with the writes of one event-loop step sent as one.

uvicorn writes a reply's status line and headers, then its body, as two ``transport.write``
calls: two ``send`` system calls and two TCP segments for every small reply. On loopback
the kernel's work for each send is charged to the sender, and the client wakes twice. Here
the protocol's transport holds what is written during one step of the event loop and
writes it as one buffer at the end of that step (or at once on ``close``). Server CPU per
reconstruct request with two workers: 548-584 -> 529-557 us (bench/README.md).

Nothing else changes: every other transport method (flow control, ``is_closing``, extra
info) goes straight to uvicorn's transport.

``HttpToolsProtocol`` is private to uvicorn: pyproject.toml pins uvicorn to the range this was
tested with, ``private_api_problem`` says what moved if a release changes it, and
``http_protocol`` then falls back to uvicorn's stock protocol (two writes per reply) rather
than failing to serve. tests/test_protocol.py fails with that message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import uvicorn

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    _import_problem: str | None = None
except ImportError as exc:  # no httptools, or uvicorn moved its module
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[assignment,misc]  # a stand-in, never served
    _import_problem = f"uvicorn.protocols.http.httptools_impl.HttpToolsProtocol: {exc}"

log = logging.getLogger("latentserve.protocol")


class CoalescedWrites:
    """A transport proxy: the writes of one loop step leave in one ``write``."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn, and tell an unanswered request that its client is gone
        (context.py: its queued work is dropped, a running search stops)."""
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            notify = cycle.scope.get("latentserve.disconnected")
            if callable(notify):
                self.loop.call_soon(notify)


def private_api_problem() -> str | None:
    """What of uvicorn's private protocol API this module needs and no longer finds, or None."""
    where = f"uvicorn {uvicorn.__version__}"
    if _import_problem is not None:
        return f"{where}: {_import_problem}"
    made = list(inspect.signature(HttpToolsProtocol.connection_made).parameters)
    if made != ["self", "transport"]:
        return f"{where}: HttpToolsProtocol.connection_made takes {made}, not (self, transport)"
    init = inspect.getsource(HttpToolsProtocol.__init__)
    if "self.loop =" not in init:
        return f"{where}: HttpToolsProtocol no longer keeps its event loop as self.loop"
    if "self.cycle" not in init or "response_complete" not in inspect.getsource(HttpToolsProtocol):
        return f"{where}: HttpToolsProtocol no longer keeps its request as self.cycle"
    return None


def http_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for ``uvicorn.run(http=...)``: ours where uvicorn's API is as tested."""
    problem = private_api_problem()
    if problem is None:
        return CoalescingHttpToolsProtocol
    log.warning("%s; serving with uvicorn's own protocol (two writes per reply)", problem)
    return "auto"  # httptools where installed, else h11
