"""HTTP on the shared asyncio loop (the standard library's streams, not
http.server, whose threads would sit beside the loop): GET/HEAD of

- ``/boot/<mac>.ipxe``: the machine's iPXE script (bootsvc/scripts.py);
- ``/files/<name>``: boot files (kernels, initrds, iPXE binaries) from the
  same roots as TFTP, with the same refusals, sent with sendfile;
- ``/healthz``: 200 ``ok`` when every configured service serves, else 503
  ``degraded``; then each service's state (``tftp: failed: Address
  already in use``), for load balancers and monitors;
- ``/metrics``: Prometheus text (bootsvc/metrics.py), when given;
- the flight recorder's view, when given its BootViews: the JSON API and
  the web page (bootsvc/http/api.py), the live stream ``/api/events``
  (bootsvc/http/sse.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..events import Emit, Kind, no_events
from ..scripts import mac_of_script
from ..service import Health
from ..streams import StreamListener
from ..tftp.files import FileSource
from .api import BootViews, api_reply, page_reply
from .message import HttpError, HttpRequest, Reply, Status, parse_head, response_head
from .sse import CONTENT_TYPE as EVENT_STREAM
from .sse import EventHub, Stream, pump

HEAD_TIMEOUT = 10.0  # seconds for a request head to arrive
IDLE_TIMEOUT = 30.0  # seconds a persistent connection may wait for its next request
SEND_GRACE = 30.0  # seconds any reply may take to leave, plus
SEND_FLOOR = 1 << 20  # bytes per second a file must at least go out at: a client that stops reading is let go
CONTENT_TYPES = {".ipxe": "text/plain; charset=utf-8", ".efi": "application/efi", ".json": "application/json"}

ScriptSource = Callable[[str, str, str], "str | None"]  # (name, client, local address) -> script or None
HealthSource = Callable[[], Health]
MacAt = Callable[[str], "str | None"]
MetricsSource = Callable[[], "tuple[bytes, str]"]  # () -> (body, content type)


class HttpService:
    def __init__(self, files: FileSource, scripts: ScriptSource, health: HealthSource, host: str = "0.0.0.0",
                 port: int = 80, emit: Emit = no_events, mac_at: MacAt = lambda ip: None,
                 views: BootViews | None = None, metrics: MetricsSource | None = None) -> None:
        self.files = files
        self.scripts = scripts
        self.health = health
        self.emit = emit
        self.mac_at = mac_at  # the MAC of a client address, where the fleet knows it
        self.views = views
        self.metrics = metrics
        self.hub = EventHub(views) if views is not None else None
        self.clock = time.time
        self.counters: Counter[str] = Counter()
        self.send_grace, self.send_floor = SEND_GRACE, SEND_FLOOR
        self.listener = StreamListener(self._connection, host, port, refuse=self._refuse)

    async def start(self) -> None:
        await self.listener.start()
        if self.hub is not None:
            self.hub.start()

    async def stop(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        await self.listener.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = (writer.get_extra_info("sockname") or ("", 0))[0]
        timeout = HEAD_TIMEOUT
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return  # the client went away or idled out
            except asyncio.LimitOverrunError:
                self.counters["bad_request"] += 1
                await self._send(writer, None, Reply(Status.HEADERS_TOO_LARGE, b"request head too large\n"), False)
                return
            try:
                req = parse_head(head[:-4])
            except HttpError as e:
                self.counters["bad_request"] += 1
                self.emit(Kind.HTTP_BAD_REQUEST, peer=f"{peer[0]}:{peer[1]}", why=str(e))
                await self._send(writer, None, Reply(e.status, f"{e}\n".encode()), False)
                return
            started = time.monotonic()
            if req.method == "GET" and req.path == "/api/events" and self.hub is not None:
                await self._events(req, reader, writer, peer[0], started)
                return  # a stream ends its connection
            reply = self._route(req, peer[0], local)
            self.counters[str(int(reply.status))] += 1
            try:
                sent = await self._send(writer, req, reply, req.keep_alive)
            except ConnectionError as e:
                self._done(req, reply, peer[0], started, None, str(e) or "connection lost")
                raise
            self._done(req, reply, peer[0], started, sent)
            if not req.keep_alive:
                return
            timeout = IDLE_TIMEOUT

    async def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        self.counters["refused"] += 1
        await self._send(writer, None, Reply(Status.SERVICE_UNAVAILABLE, f"{why}\n".encode()), False)

    def _done(self, req: HttpRequest, reply: Reply, peer: str, started: float, sent: int | None,
              failed: str | None = None) -> None:
        """One event per request: who asked what, and how it went."""
        self.emit(Kind.HTTP_REQUEST, mac=mac_of_script(req.path.lstrip("/")) or self.mac_at(peer), peer=peer,
                  method=req.method, path=req.path, status=int(reply.status), bytes=sent,
                  seconds=round(time.monotonic() - started, 4), failed=failed)

    async def _events(self, req: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      peer: str, started: float) -> None:
        """``/api/events``: the stream, or 503 over its caps (with a time to
        come back, which a browser's EventSource does not take: it gives up
        on anything but 200, so the caps are per address and generous)."""
        assert self.hub is not None
        stream = self.hub.open(peer)
        if not isinstance(stream, Stream):
            self.counters["503"] += 1
            reply = Reply(Status.SERVICE_UNAVAILABLE, f"{stream}\n".encode(), headers={"Retry-After": "10"})
            self._done(req, reply, peer, started, await self._send(writer, req, reply, False))
            return
        self.counters["200"] += 1
        reply, sent = Reply(Status.OK, content_type=EVENT_STREAM), None
        try:
            sent = await pump(stream, reader, writer, self.send_grace)
        except ConnectionError as e:
            self.counters["send_timeout"] += 1
            self._done(req, reply, peer, started, None, str(e) or "connection lost")
            raise
        finally:
            self.hub.close(stream)
        self._done(req, reply, peer, started, sent)

    def _route(self, req: HttpRequest, client: str, local: str) -> Reply:
        if req.method not in ("GET", "HEAD"):
            return Reply(Status.METHOD_NOT_ALLOWED, b"only GET and HEAD\n")
        path = req.path
        if path == "/healthz":
            health = self.health()
            return Reply(Status.OK if health.serving else Status.SERVICE_UNAVAILABLE, health.text().encode())
        if path == "/metrics" and self.metrics is not None:
            body, content_type = self.metrics()
            return Reply(Status.OK, body, content_type=content_type)
        if self.views is not None:
            found = self._view(req)
            if found is not None:
                return found
        if path.startswith("/boot/"):
            try:
                script = self.scripts(path[1:], client, local)
            except PermissionError as e:
                return Reply(Status.FORBIDDEN, f"{e}\n".encode())
            if script is None:
                return Reply(Status.NOT_FOUND, b"no such machine, or its disk is not served\n")
            return Reply(Status.OK, script.encode(), content_type=CONTENT_TYPES[".ipxe"])
        if path.startswith("/files/"):
            try:
                found = self.files.path(path[len("/files/"):])
            except PermissionError as e:
                return Reply(Status.FORBIDDEN, f"{e}\n".encode())
            except FileNotFoundError:
                return Reply(Status.NOT_FOUND, b"not found\n")
            return Reply(Status.OK, path=found,
                         content_type=CONTENT_TYPES.get(found.suffix, "application/octet-stream"))
        return Reply(Status.NOT_FOUND, b"not found\n")

    def _view(self, req: HttpRequest) -> Reply | None:
        """The flight recorder's routes: the API, the page, and a HEAD of
        the stream (a GET of it is a stream, not a reply)."""
        assert self.views is not None
        if req.path.startswith("/api/"):
            if req.path == "/api/events":
                return Reply(Status.OK, content_type=EVENT_STREAM)
            return api_reply(req.path, req.query, self.views, self.clock())
        return page_reply(req.path)

    async def _send(self, writer: asyncio.StreamWriter, req: HttpRequest | None, reply: Reply,
                    keep_alive: bool) -> int:
        """Send the reply within its time (``send_grace`` plus its size at
        ``send_floor``); the bytes of body sent. A client that stops reading
        is a ConnectionError, and its slot and file are let go."""
        size = len(reply.body) if reply.path is None else _size(reply.path)
        try:
            async with asyncio.timeout(self.send_grace + size / self.send_floor):
                return await self._write(writer, req, reply, keep_alive)
        except TimeoutError:
            self.counters["send_timeout"] += 1
            raise ConnectionError("the client stopped reading") from None

    async def _write(self, writer: asyncio.StreamWriter, req: HttpRequest | None, reply: Reply,
                     keep_alive: bool) -> int:
        head_only = req is not None and req.method == "HEAD"
        if reply.path is None:
            writer.write(response_head(reply.status, len(reply.body), reply.content_type, keep_alive, reply.headers))
            if not head_only:
                writer.write(reply.body)
            await writer.drain()
            return 0 if head_only else len(reply.body)
        try:
            f = open(reply.path, "rb")
        except OSError:
            writer.write(response_head(Status.INTERNAL_ERROR, 0, keep_alive=False))
            await writer.drain()
            raise ConnectionError("cannot open the file") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            writer.write(response_head(reply.status, size, reply.content_type, keep_alive))
            await writer.drain()
            if not head_only:
                # zero-copy from the page cache: a boot storm fetches the same kernel many times
                await asyncio.get_running_loop().sendfile(writer.transport, f, 0, size)
                return size
        return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
