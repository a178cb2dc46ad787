"""The zone on UDP and TCP (RFC 1035 §4.2; TCP for truncated answers,
RFC 7766) on the shared asyncio loop."""

from __future__ import annotations

import asyncio
import logging

from .zone import Zone

log = logging.getLogger("bootsvc.dns")
TCP_IDLE = 10.0  # seconds a TCP client may wait between queries (RFC 7766 §6.2.3)


class DnsService(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone, host: str = "0.0.0.0", port: int = 53) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)
        except OSError:
            self.close_udp()
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.zone.answer(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                # each message has a two-byte length prefix (RFC 1035 §4.2.2)
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                query = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = self.zone.answer(query, udp=False)
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def close_udp(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def stop(self) -> None:
        self.close_udp()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._clients):
            task.cancel()
        if self._tcp is not None:
            await self._tcp.wait_closed()
