"""The TCP side shared by the stream services (HTTP, DNS over TCP): one
asyncio server, a task per client, caps on clients in all and per source
address (so one host cannot fill every slot: it once took 1030 idle
connections to keep iPXE scripts from every machine), and a stop that ends
the listener and every client it still has."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Refuse = Callable[[asyncio.StreamWriter, str], Awaitable[None]]  # a last word to a client over a cap, and why
MAX_CLIENTS = 1024
MAX_PER_SOURCE = 32  # a boot storm behind one NAT is many machines; a single host needs a few


async def _just_close(writer: asyncio.StreamWriter, why: str) -> None:
    pass


class StreamListener:
    def __init__(self, client: Client, host: str, port: int, limit: int = 64 * 1024, refuse: Refuse = _just_close,
                 max_clients: int = MAX_CLIENTS, max_per_source: int = MAX_PER_SOURCE) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.limit = limit  # bytes a reader buffers before a line or message is too long
        self.refuse = refuse
        self.max_clients = max_clients
        self.max_per_source = max_per_source
        self._server: asyncio.Server | None = None
        self.clients: set[asyncio.Task[None]] = set()
        self.per_source: dict[str, int] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=self.limit)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        source = str((writer.get_extra_info("peername") or ("?",))[0])
        self.clients.add(task)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        try:
            if len(self.clients) > self.max_clients:
                await self.refuse(writer, "too many connections")
            elif self.per_source[source] > self.max_per_source:
                await self.refuse(writer, "too many connections from your address")
            else:
                await self.client(reader, writer)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the client went away or stalled: nothing more to say
        except asyncio.CancelledError:
            # stop() ends every client this way; the task is asyncio's own
            # (start_server's), whose done-callback asks task.exception() and
            # logs a cancelled one as an ERROR with a traceback
            pass
        finally:
            self.clients.discard(task)
            left = self.per_source[source] - 1
            if left:
                self.per_source[source] = left
            else:
                del self.per_source[source]
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.clients):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
