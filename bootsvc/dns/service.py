"""The zone on UDP and TCP (RFC 1035 §4.2; TCP for truncated answers,
RFC 7766) on the shared asyncio loop, and names outside it forwarded for
the clients ``dns.allow`` and the DHCP subnets name, refused for everyone
else (bootsvc/dns/settings.py; never an open resolver)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..events import Emit, Kind, no_events
from ..streams import StreamListener
from .forward import Forwarder, fit, udp_limit
from .limits import Limits, Verdict
from .settings import Forwarding
from .zone import Outside, Zone, reverse_address

TCP_IDLE = 10.0  # seconds a TCP client may wait between queries (RFC 7766 §6.2.3)
SAID_EVERY = 1.0  # seconds between two events of one kind a client can cause at will


class DnsService(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone, host: str = "0.0.0.0", port: int = 53, forwarding: Forwarding | None = None,
                 emit: Emit = no_events, clock: Callable[[], float] = time.monotonic) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.emit = emit
        self.clock = clock
        self.limits = Limits()
        self.forwarding = Forwarding()
        self.forwarder = Forwarder(())
        self.set_forwarding(forwarding or Forwarding())
        self.forwards: set[asyncio.Task[None]] = set()
        self.said: dict[Kind, float] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp = StreamListener(self._tcp_client, host, port)

    def set_forwarding(self, forwarding: Forwarding) -> None:
        """New upstreams and allowed networks (a reload), for the next queries."""
        if forwarding.upstreams != self.forwarder.upstreams:
            self.forwarder = Forwarder(forwarding.upstreams)
        self.forwarding = forwarding

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
        if self.limits.query(addr[0], self.clock()) is Verdict.RATE:
            self._say(Kind.DNS_LIMITED, addr[0], reason="rate", why="over its query rate: dropped")
            return
        reply = self._respond(data, addr[0], udp=True)
        if isinstance(reply, Outside):
            if self._begin_forward(addr[0]):  # before a task is made: tasks are bounded too
                task = asyncio.get_running_loop().create_task(self._forward_udp(reply, addr))
                self.forwards.add(task)
                task.add_done_callback(self.forwards.discard)
                return
            reply = self.zone.failed(reply)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def _respond(self, data: bytes, source: str, udp: bool) -> bytes | Outside | None:
        """The zone's reply; Outside for a query to forward for this client."""
        forwarded = bool(self.forwarding.upstreams) and self.forwarding.allows(source)
        reply = self.zone.respond(data, udp, recursion=forwarded)
        if not isinstance(reply, Outside):
            return reply
        if forwarded:
            local = self.forwarding.is_local(reverse_address(reply.query.q.qname))
            return self.zone.unknown(reply) if local else reply
        if self.forwarding.upstreams:
            self._say(Kind.DNS_REFUSED, source, name=str(reply.query.q.qname),
                      why="not in the DHCP subnets, loopback or dns.allow")
        return self.zone.refused(reply)

    async def _forward_udp(self, outside: Outside, addr: tuple[str, int]) -> None:
        reply = await self._forward(outside, addr[0], tcp=False)
        if reply is not None and self.transport is not None:
            self.transport.sendto(fit(reply, udp_limit(outside.query)), addr)

    def _begin_forward(self, source: str) -> bool:
        """Whether a forward for ``source`` may start (then ``_forward`` ends it)."""
        if self.limits.begin_forward(source) is Verdict.BUSY:
            self._say(Kind.DNS_LIMITED, source, reason="in_flight", why="too many forwards waiting: SERVFAIL")
            return False
        return True

    async def _forward(self, outside: Outside, source: str, tcp: bool) -> bytes | None:
        """The upstream's reply, or SERVFAIL when none answers in time."""
        try:
            reply = await self.forwarder.resolve(outside.data, tcp)
        finally:
            self.limits.end_forward(source)
        if reply is None:
            self._say(Kind.DNS_UPSTREAM_FAILED, source, name=str(outside.query.q.qname),
                      upstreams=" ".join(map(str, self.forwarder.upstreams)), why="no upstream answered: SERVFAIL")
            return self.zone.failed(outside)
        return reply

    def _say(self, kind: Kind, source: str, **fields: object) -> None:
        """An event a client can cause at will: at most one of a kind a second."""
        now = self.clock()
        if now - self.said.get(kind, -SAID_EVERY) >= SAID_EVERY:
            self.said[kind] = now
            self.emit(kind, peer=source, **fields)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            while True:
                # each message has a two-byte length prefix (RFC 1035 §4.2.2)
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                query = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = self._respond(query, source, udp=False)
                if isinstance(reply, Outside):
                    reply = await self._forward(reply, source, tcp=True) if self._begin_forward(source) \
                        else self.zone.failed(reply)
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
        for task in list(self.forwards):
            task.cancel()
        await asyncio.gather(*self.forwards, return_exceptions=True)
        await self.tcp.stop()
