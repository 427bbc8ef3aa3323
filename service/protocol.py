"""uvicorn's HTTP protocol, with the writes of one event-loop step sent as one.

uvicorn writes a reply's status line and headers, then its body, as two ``transport.write``
calls: two ``send`` system calls and two TCP segments for every small reply. On loopback
the kernel's work for each send is charged to the sender, and the client wakes twice. Here
the protocol's transport holds what is written during one step of the event loop and
writes it as one buffer at the end of that step (or at once on ``close``). Server CPU per
reconstruct request with two workers: 548-584 -> 529-557 us (bench/README.md).

Nothing else changes: every other transport method (flow control, ``is_closing``, extra
info) goes straight to uvicorn's transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
