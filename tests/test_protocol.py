"""The coalescing HTTP protocol: one write per loop step, and HTTP behaves as before."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from service import protocol
from service.protocol import CoalescedWrites, CoalescingHttpToolsProtocol

BIG = bytes(range(256)) * 20_000  # 5 MB: more than the socket buffers hold at once


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_loop_step_leave_as_one() -> None:
    async def main() -> FakeTransport:
        fake = FakeTransport()
        writes = CoalescedWrites(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writes.write(b"body")
        assert fake.writes == [] and writes.get_write_buffer_size() == 23
        await asyncio.sleep(0)  # the end of this step
        assert fake.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        writes.write(b"last")
        writes.close()  # flushes first
        assert fake.writes[-1] == b"last" and fake.closed
        writes.write(b"after close")
        await asyncio.sleep(0)
        assert fake.writes[-1] == b"last"  # nothing is written to a closing transport
        assert writes.get_extra_info("peername") == "info:peername"
        return fake

    asyncio.run(main())


async def app(scope, receive, send) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(BIG)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": BIG})
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body) + 5).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"echo " + body})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from serve(CoalescingHttpToolsProtocol)


def serve(protocol: Any) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, port=port, http=protocol, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # a bound for a hung start, not a speed
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_keep_alive_requests_get_whole_replies(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        for i in range(20):
            r = client.post("/echo", content=f"request {i}".encode())
            assert (r.status_code, r.text) == (201, f"echo request {i}")
            assert r.headers["content-type"] == "text/plain"


def test_a_large_reply_arrives_whole(base_url: str) -> None:
    r = httpx.get(f"{base_url}/big", timeout=30)
    assert r.status_code == 200 and r.content == BIG


def test_a_streamed_reply_arrives_whole(base_url: str) -> None:
    r = httpx.get(f"{base_url}/stream")
    assert r.text == "one two three" and r.headers["transfer-encoding"] == "chunked"


def test_connection_close_and_expect_continue(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"hello")
        reply = b""
        while chunk := s.recv(65536):  # the server closes after the reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 201") and reply.endswith(b"\r\n\r\necho hello")


def test_uvicorns_private_protocol_api_is_as_tested() -> None:
    problem = protocol.private_api_problem()
    assert problem is None, (
        f"{problem}. service/protocol.py subclasses this private class: keep uvicorn in the "
        "range pinned in pyproject.toml, or adapt protocol.py to the new release"
    )
    assert protocol.http_protocol() is CoalescingHttpToolsProtocol


def test_a_moved_api_falls_back_to_uvicorns_own_protocol(monkeypatch, caplog) -> None:
    monkeypatch.setattr(protocol, "_import_problem", "No module named 'httptools'")
    assert "No module named 'httptools'" in (protocol.private_api_problem() or "")
    assert protocol.http_protocol() == "auto"
    assert "two writes per reply" in caplog.text


@pytest.fixture
def guarded() -> Iterator[str]:
    """Requests must arrive within 0.5 s; 3 connections per address (loopback not trusted)."""
    cls = CoalescingHttpToolsProtocol
    saved = cls.request_timeout_s, cls.max_per_client, cls.trusted
    protocol.configure(0.5, 3, "10.9.9.9")
    try:
        yield from serve(cls)
    finally:
        cls.request_timeout_s, cls.max_per_client, cls.trusted = saved


def closed_by_server(sock: socket.socket, timeout: float = 60) -> bool:
    """True once the server has closed the connection (recv gives b"" or a reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_request_that_trickles_in_is_cut_off(guarded: str) -> None:
    port = int(guarded.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        closed = threading.Event()
        watcher = threading.Thread(target=lambda: closed_by_server(sock) and closed.set())
        watcher.start()
        for i in range(200):  # one header line at a time, as a slowloris client does
            if closed.is_set():
                break
            try:
                sock.sendall(f"x-slow-{i}: 1\r\n".encode())
            except OSError:
                break
            time.sleep(0.05)
        watcher.join(60)
        assert closed.is_set(), "the server kept a trickling request open"
    with httpx.Client(base_url=guarded) as client:  # a whole request is answered as usual
        assert client.post("/echo", content=b"hi").text == "echo hi"


def test_an_idle_connection_that_sends_nothing_is_closed(guarded: str) -> None:
    port = int(guarded.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert closed_by_server(sock)


def test_connections_per_address_are_capped(guarded: str) -> None:
    port = int(guarded.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.settimeout(30)
            reply = b""
            while chunk := extra.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert json.loads(body) == {"detail": "too many connections from this address; retry later"}
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30  # the server sees them close, then serves this address again
    while True:
        try:
            with httpx.Client(base_url=guarded) as client:
                if client.post("/echo", content=b"again").status_code == 201:
                    break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the address stayed refused"
        time.sleep(0.05)
