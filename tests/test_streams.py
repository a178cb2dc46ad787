"""bootsvc/streams.py: a stop ends the clients it still has quietly."""

from __future__ import annotations

import asyncio
from typing import Any

from bootsvc.streams import StreamListener


def test_a_stop_with_a_client_waiting_logs_no_error() -> None:
    errors: list[dict[str, Any]] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # waits: the peer says nothing

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        listener = StreamListener(client, "127.0.0.1", 0)
        await listener.start()
        assert listener._server is not None
        port = listener._server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):  # bounded: until the server has the client
            if listener.clients:
                break
            await asyncio.sleep(0.01)
        assert listener.clients
        await listener.stop()
        for _ in range(5):  # the done-callbacks run on the next turns
            await asyncio.sleep(0)
        writer.close()

    asyncio.run(main())
    assert errors == []
