"""iSNS over TCP in the shared asyncio loop (RFC 4171 §5: port 3205, one
message at a time per connection, responses in the order of requests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from .codec import IsnsFormatError, Message, Reassembler, encode_message, unpack_header
from .protocol import HEADER_SIZE, RESPONSE, Status
from .registry import Registry

log = logging.getLogger("isns.server")


class IsnsServer:
    def __init__(self, registry: Registry, host: str = "0.0.0.0", port: int = 3205,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._clients):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._clients.add(writer)
        joined = Reassembler()
        try:
            while True:
                try:
                    head = await reader.readexactly(HEADER_SIZE)
                except asyncio.IncompleteReadError:
                    return  # the client closed
                try:
                    header = unpack_header(head)
                    payload = await reader.readexactly(header.length)
                    msg = joined.feed(header, payload)
                except IsnsFormatError as e:
                    # the stream cannot be trusted past a bad PDU: say so if we can, then close
                    log.info("event=isns.malformed peer=%s why=%s", peer, e)
                    if not head[2] & 0x80:  # a request: answer it
                        fn = int.from_bytes(head[2:4], "big")
                        xid = int.from_bytes(head[8:10], "big")
                        self._send(writer, Message(fn | RESPONSE, xid, status=Status.MESSAGE_FORMAT_ERROR))
                        await writer.drain()
                    return
                if msg is None or msg.is_response:
                    continue  # more PDUs to come; a client's response (ESI, SCN) needs no answer here
                try:
                    reply = self.registry.handle(msg, self.clock())
                except Exception:  # a bug must not end the service: answer and keep serving
                    log.exception("event=isns.error peer=%s function=%d", peer, msg.function)
                    reply = Message(msg.function | RESPONSE, msg.xid, status=Status.INTERNAL_ERROR)
                if reply is not None:
                    self._send(writer, reply)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, msg: Message) -> None:
        for pdu in encode_message(msg):
            writer.write(pdu)
