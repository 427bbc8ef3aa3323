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
import collections
import inspect
import logging
from typing import Any, ClassVar

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


_TOO_MANY_BODY = b'{"detail": "too many connections from this address; retry later"}'
TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_TOO_MANY_BODY)).encode() + b"\r\n\r\n"
    + _TOO_MANY_BODY
)  # fmt: skip


DRAIN_S = 1.0  # how long an idle connection stays open once shutdown begins


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Also guards against slow and greedy clients (nginx's client_header_timeout and
    limit_conn): a request must arrive whole, headers and body, within ``request_timeout_s``
    of its first byte (or of the connection, for the first), else the connection is closed; and
    one address may hold at most ``max_per_client`` connections (503 beyond), except trusted
    proxies, whose clients are named by X-Forwarded-For. ``http_protocol`` sets both."""

    request_timeout_s: float | None = None
    max_per_client: int | None = None
    trusted: frozenset[str] = frozenset()
    _open: ClassVar[collections.Counter[str]] = collections.Counter()  # per address (a class's own)
    _address: str | None = None
    _arrival: asyncio.TimerHandle | None = None
    _draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else None
        if self.max_per_client and address and address not in self.trusted:
            if self._open[address] >= self.max_per_client:
                transport.write(TOO_MANY)
                transport.close()
                return
            self._address = address
            self._open[address] += 1
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]
        self._expect_request()

    def _expect_request(self) -> None:
        if self.request_timeout_s:
            self._arrival = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        """The request did not arrive in time: close, unless an answer is being written."""
        self._arrival = None
        if self.cycle is None or not self.cycle.response_started:
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._arrival is None:
            self._expect_request()

    def on_message_complete(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: "Connection: close"

    def shutdown(self) -> None:
        """Graceful shutdown, without cutting off a request on the wire. uvicorn closes an idle
        keep-alive connection at once, so a request its client sent at that instant was lost
        (ReadError, RemoteProtocolError). Here an idle connection stays open ``DRAIN_S``
        longer: a request that arrives meanwhile is answered with ``Connection: close``."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(DRAIN_S, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn, and tell an unanswered request that its client is gone
        (context.py: its queued work is dropped, a running search stops)."""
        if self._address is not None:
            self._open[self._address] -= 1
            if not self._open[self._address]:
                del self._open[self._address]
            self._address = None
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None
        if self.transport is None:  # refused in connection_made: uvicorn never saw it
            return
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
    for hook in ("on_message_begin", "on_headers_complete", "on_message_complete", "shutdown"):
        if not callable(getattr(HttpToolsProtocol, hook, None)):
            return f"{where}: HttpToolsProtocol has no {hook} parser callback any more"
    return None


def configure(
    request_timeout_s: float | None, max_per_client: int | None, trusted: str = "127.0.0.1"
) -> None:
    """Set the slow-client limits (``trusted``: uvicorn's forwarded_allow_ips form). Called by
    ``create_app`` in each worker process: uvicorn's workers import the protocol class by name,
    so the limits travel as the settings do, not with the class."""
    proxies = frozenset(a.strip() for a in trusted.split(",") if a.strip())
    cls = CoalescingHttpToolsProtocol
    cls.request_timeout_s = request_timeout_s
    cls.max_per_client = None if "*" in proxies else max_per_client
    cls.trusted = proxies


def http_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for ``uvicorn.run(http=...)``: ours where uvicorn's API is as tested."""
    problem = private_api_problem()
    if problem is None:
        return CoalescingHttpToolsProtocol
    log.warning("%s; serving with uvicorn's own protocol (two writes per reply)", problem)
    return "auto"  # httptools where installed, else h11
