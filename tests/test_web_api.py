"""The flight recorder's view over HTTP: the API's routes (sans-I/O), the
page's files and their security headers, the live event stream against a
real socket (events from another thread, caps, a client that does not
read), and /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootsvc.http.api import SECURITY_HEADERS, api_reply, page_reply
from bootsvc.http.message import Status
from bootsvc.http.service import HttpService
from bootsvc.http.sse import QUEUE, EventHub, sse_event
from bootsvc.service import Health
from bootsvc.tftp.files import FileSource
from tests.e2e.peers import LOOPBACK, free_port
from tests.loop_thread import serving

MAC = "52:54:00:00:00:01"
EVIL = '<img src=x onerror="alert(1)">'


class Views:
    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.asked: list[tuple[str, int]] = []

    def machines(self, now: float) -> list[dict[str, Any]]:
        return [{"mac": MAC, "hostname": EVIL, "state": "failed", "diagnosis": EVIL}]

    def boots(self, who: str, limit: int, now: float) -> list[dict[str, Any]] | None:
        self.asked.append((who, limit))
        return [{"id": 1, "mac": MAC, "steps": []}] if who in (MAC, "pc1") else None

    def summary(self, mac: str, now: float) -> dict[str, Any] | None:
        return {"mac": mac, "state": "running", "diagnosis": "line one\nline two"}

    def watch(self, listener: Any) -> None:
        self.listeners.append(listener)

    def unwatch(self, listener: Any) -> None:
        self.listeners.remove(listener)


def test_api_routes() -> None:
    views = Views()
    reply = api_reply("/api/machines", "", views, 0.0)
    assert reply is not None and reply.status == Status.OK and reply.content_type == "application/json"
    assert json.loads(reply.body)[0]["hostname"] == EVIL  # data stays data: the page sets it as text
    reply = api_reply("/api/machines/pc1/boots", "limit=2", views, 0.0)
    assert reply is not None and reply.status == Status.OK and json.loads(reply.body)[0]["id"] == 1
    assert views.asked == [("pc1", 2)]
    api_reply(f"/api/machines/{MAC}/boots", "", views, 0.0)
    assert views.asked[-1] == (MAC, 5)
    for query in ("limit=0", "limit=x", "limit=101", "limit=-1"):
        reply = api_reply("/api/machines/pc1/boots", query, views, 0.0)
        assert reply is not None and reply.status == Status.BAD_REQUEST, query
    reply = api_reply("/api/machines/nobody/boots", "", views, 0.0)
    assert reply is not None and reply.status == Status.NOT_FOUND
    for other in ("/api/machine", "/api/machines/pc1", "/api/machines//boots", "/api/machines/pc1/boots/x"):
        assert api_reply(other, "", views, 0.0) is None, other


def test_page_and_its_files() -> None:
    for path in ("/", "/machines/pc1", "/machines/%3Cscript%3E"):
        reply = page_reply(path)
        assert reply is not None and reply.content_type.startswith("text/html") and b"/web/app.js" in reply.body
        assert reply.headers == SECURITY_HEADERS
        assert "script-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
    js = page_reply("/web/app.js")
    assert js is not None and js.content_type.startswith("text/javascript")
    assert b"innerHTML" not in js.body and b"textContent" in js.body  # data is never markup
    css = page_reply("/web/style.css")
    assert css is not None and b"prefers-color-scheme: dark" in css.body
    for other in ("/web/", "/web/../server.py", "/web/__init__.py", "/index.html", "/machines"):
        assert page_reply(other) is None, other


def test_sse_framing() -> None:
    assert sse_event("boot", b'{"a":1}') == b'event: boot\ndata: {"a":1}\n\n'


def test_a_stream_that_falls_behind_is_dropped() -> None:
    async def run() -> None:
        hub = EventHub(Views(), max_streams=2, max_per_source=1)
        hub.start()
        one = hub.open("10.0.0.1")
        assert not isinstance(one, str)
        assert hub.open("10.0.0.1") == "too many event streams from your address"
        assert not isinstance(hub.open("10.0.0.2"), str)
        assert hub.open("10.0.0.3") == "too many event streams"
        for i in range(QUEUE + 1):
            hub.publish(sse_event("boot", str(i).encode()))
        assert one.dropped and hub.dropped == 2  # both fell behind
        assert one.queue.get_nowait() is None  # nothing kept for it but its end
        hub.stop()

    asyncio.run(run())


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[int, Views]]:
    views = Views()
    port = free_port()
    service = HttpService(FileSource([tmp_path]), lambda n, c, l: None, lambda: Health(True, {}), LOOPBACK, port,
                          views=views, metrics=lambda: (b"bootsvc_up 1\n", "text/plain; version=0.0.4"))
    with serving(service.start, service.stop):
        yield port, views


def read_until(sock: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    while marker not in got:
        data = sock.recv(65536)
        assert data, got
        got += data
    return got


def get(port: int, path: str) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while data := s.recv(65536):
            out += data
        return out


def test_event_stream_and_metrics_over_http(web: tuple[int, Views]) -> None:
    port, views = web
    assert get(port, "/metrics").startswith(b"HTTP/1.1 200 OK") and b"bootsvc_up 1" in get(port, "/metrics")
    page = get(port, "/")
    assert b"Content-Security-Policy: default-src 'none'" in page and b"X-Content-Type-Options: nosniff" in page
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until(s, b"retry: 3000\n\n")
        assert b"Content-Type: text/event-stream" in got and b"Content-Length" not in got
        (told,) = views.listeners
        threading.Thread(target=told, args=(MAC,)).start()  # the recorder tells from any thread
        got = read_until(s, b"\n\n", got.split(b"retry: 3000\n\n", 1)[1])
        name, data = got.split(b"\n")[:2]
        assert name == b"event: boot" and json.loads(data[len(b"data: "):])["diagnosis"] == "line one\nline two"
        # a fifth stream from one address is refused; the first four are served
        others = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(4)]
        try:
            for o in others:
                o.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            heads = [read_until(o, b"\r\n\r\n") for o in others]
            assert sum(h.startswith(b"HTTP/1.1 503") for h in heads) == 1
            assert sum(h.startswith(b"HTTP/1.1 200") for h in heads) == 3
        finally:
            for o in others:
                o.close()
