"""The TCP side shared by the stream services (HTTP, DNS over TCP): one
asyncio server, a task per client counted against a cap, and a stop that
ends the listener and every client it still has."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamListener:
    def __init__(self, client: Client, host: str, port: int, limit: int = 64 * 1024) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.limit = limit  # bytes a reader buffers before a line or message is too long
        self._server: asyncio.Server | None = None
        self.clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=self.limit)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self.client(reader, writer)
        except ConnectionError:
            pass  # the client went away: nothing to answer
        finally:
            self.clients.discard(task)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.clients):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
