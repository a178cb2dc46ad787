"""DHCP on a UDP socket in the shared asyncio loop (no sniffing, no raw
sockets): port 67 bound to one interface, replies sent as RFC 2131 §4.1
says: to the relay when there is one, to the client's address when it has
one, else broadcast on the interface."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

from ..events import Kind
from ..inventory import Machine
from .message import ANY, DhcpFormatError, IPv4, MessageType, Request, decode, encode
from .responder import Responder

SERVER_PORT = 67
CLIENT_PORT = 68
RECEIVE_BUFFER = 4 << 20  # bytes (the kernel caps it at net.core.rmem_max)
PXE_PORT = 4011  # proxyDHCP requests and boot server discovery (PXE spec §2.2.5)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
Adopt = Callable[[str], Awaitable[Machine | None]]  # unknown_machines: default (bootsvc/fleet.py)


class DhcpService(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder, address: IPv4, interface: str | None = None,
                 port: int = SERVER_PORT, clock: Callable[[], float] = time.time,
                 reply_to_source: bool = False, adopt: Adopt | None = None) -> None:
        self.responder = responder
        self.adopt = adopt
        self._adopting: set[asyncio.Task[None]] = set()
        # port 4011: the client asks from its own address and port, and the answer goes back there
        self.reply_to_source = reply_to_source
        self.address = address
        self.interface = interface
        self.port = port
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Bind and serve; an OSError (port taken, no such interface) is the
        caller's one-line report."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            # a boot storm arrives in bursts: room for them instead of drops
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.bind(("0.0.0.0", self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        counters = self.responder.counters
        try:
            req = decode(data)
        except DhcpFormatError as e:
            counters["dropped_malformed"] += 1
            self.responder.emit(Kind.DHCP_MALFORMED, peer=f"{addr[0]}:{addr[1]}", why=str(e))
            return
        counters[f"received_{req.msg_type.name.lower()}"] += 1
        now = self.clock()
        if self.adopt is not None and self.responder.wants_adoption(req, now):
            # making the new machine's disk is slow work: off the loop, then the answer
            task = asyncio.get_running_loop().create_task(self._adopt_then_answer(req, addr))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)
            return
        self._answer(req, addr, now)

    async def _adopt_then_answer(self, req: Request, addr: tuple[str, int]) -> None:
        assert self.adopt is not None
        await self.adopt(req.mac)
        self._answer(req, addr, self.clock())

    def _answer(self, req: Request, addr: tuple[str, int], now: float) -> None:
        counters = self.responder.counters
        try:
            reply = self.responder.handle(req, self.address, now)
            self.responder.leases.commit()  # what the answer promises is recorded before it leaves
        except Exception as e:  # a bug or a failing lease store must not end the service: count it, keep serving
            counters["errors"] += 1
            self.responder.emit(Kind.DHCP_ERROR, mac=req.mac, why=repr(e))  # logged with its traceback
            return
        if reply is None or self.transport is None:
            return
        if self.reply_to_source:
            dest = addr
        elif req.giaddr != ANY:
            dest = (str(req.giaddr), SERVER_PORT)
        elif req.ciaddr != ANY and reply.msg_type is not MessageType.NAK:
            dest = (str(req.ciaddr), CLIENT_PORT)
        else:
            # No ARP entry for an address the client does not have yet:
            # broadcast, which every client accepts (RFC 2131 §4.1).
            dest = ("255.255.255.255", CLIENT_PORT)
        self.transport.sendto(encode(reply), dest)
        counters[f"sent_{reply.msg_type.name.lower()}"] += 1

    async def stop(self) -> None:
        for task in list(self._adopting):
            task.cancel()
        if self.transport is not None:
            self.transport.close()
