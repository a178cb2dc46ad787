"""The zone on UDP and TCP (RFC 1035 §4.2; TCP for truncated answers,
RFC 7766) on the shared asyncio loop."""

from __future__ import annotations

import asyncio

from ..streams import StreamListener
from .zone import Zone

TCP_IDLE = 10.0  # seconds a TCP client may wait between queries (RFC 7766 §6.2.3)


class DnsService(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone, host: str = "0.0.0.0", port: int = 53) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp = StreamListener(self._tcp_client, host, port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        try:
            await self.tcp.start()
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
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass

    def close_udp(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def stop(self) -> None:
        self.close_udp()
        await self.tcp.stop()
