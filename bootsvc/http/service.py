"""HTTP on the shared asyncio loop (the standard library's streams, not
http.server, whose threads would sit beside the loop): GET/HEAD of

- ``/boot/<mac>.ipxe``: the machine's iPXE script (bootsvc/scripts.py);
- ``/files/<name>``: boot files (kernels, initrds, iPXE binaries) from the
  same roots as TFTP, with the same refusals, sent with sendfile;
- ``/healthz``: ``ok`` and the services running, for load balancers and
  systemd watchdogs.

Later issues add the status page and metrics as more routes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..tftp.files import FileSource
from .message import HttpError, HttpRequest, Status, parse_head, response_head

log = logging.getLogger("bootsvc.http")
HEAD_TIMEOUT = 10.0  # seconds for a request head to arrive
IDLE_TIMEOUT = 30.0  # seconds a persistent connection may wait for its next request
MAX_CONNECTIONS = 1024
CONTENT_TYPES = {".ipxe": "text/plain; charset=utf-8", ".efi": "application/efi", ".json": "application/json"}

ScriptSource = Callable[[str, str, str], "str | None"]  # (name, client, local address) -> script or None
Health = Callable[[], "dict[str, str]"]


@dataclass
class Reply:
    status: Status
    body: bytes = b""
    path: Path | None = None  # sent with sendfile instead of body
    content_type: str = "text/plain; charset=utf-8"


class HttpService:
    def __init__(self, files: FileSource, scripts: ScriptSource, health: Health, host: str = "0.0.0.0",
                 port: int = 80) -> None:
        self.files = files
        self.scripts = scripts
        self.health = health
        self.host = host
        self.port = port
        self.counters: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=64 * 1024)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = (writer.get_extra_info("sockname") or ("", 0))[0]
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                await self._send(writer, None, Reply(Status.SERVICE_UNAVAILABLE, b"too many connections\n"), False)
                return
            timeout = HEAD_TIMEOUT
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return  # the client went away or idled out
                except asyncio.LimitOverrunError:
                    self.counters["bad_request"] += 1
                    await self._send(writer, None, Reply(Status.HEADERS_TOO_LARGE, b"request head too large\n"),
                                     False)
                    return
                try:
                    req = parse_head(head[:-4])
                except HttpError as e:
                    self.counters["bad_request"] += 1
                    log.debug("event=http.bad_request peer=%s why=%s", peer[0], e)
                    await self._send(writer, None, Reply(e.status, f"{e}\n".encode()), False)
                    return
                reply = self._route(req, peer[0], local)
                self.counters[str(int(reply.status))] += 1
                log.info("event=http.request peer=%s method=%s path=%s status=%d", peer[0], req.method,
                         req.path, reply.status)
                await self._send(writer, req, reply, req.keep_alive)
                if not req.keep_alive:
                    return
                timeout = IDLE_TIMEOUT
        except ConnectionError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    def _route(self, req: HttpRequest, client: str, local: str) -> Reply:
        if req.method not in ("GET", "HEAD"):
            return Reply(Status.METHOD_NOT_ALLOWED, b"only GET and HEAD\n")
        path = req.path
        if path == "/healthz":
            lines = [f"{name}: {state}" for name, state in self.health().items()]
            return Reply(Status.OK, ("ok\n" + "".join(line + "\n" for line in lines)).encode())
        if path.startswith("/boot/"):
            script = self.scripts(path[1:], client, local)
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

    async def _send(self, writer: asyncio.StreamWriter, req: HttpRequest | None, reply: Reply,
                    keep_alive: bool) -> None:
        head_only = req is not None and req.method == "HEAD"
        if reply.path is None:
            writer.write(response_head(reply.status, len(reply.body), reply.content_type, keep_alive))
            if not head_only:
                writer.write(reply.body)
            await writer.drain()
            return
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
