"""Queries for names outside the zone, asked of upstream resolvers on the
event loop (RFC 1035 §7: a stub's query passed on, the answer passed back).

Each forward goes out from a socket of its own (a fresh source port) with
a fresh random ID, and only a reply from that upstream with that ID and
the same question is taken (RFC 5452 §9.1, against forged answers). A
client over UDP is asked of the upstream over UDP and gets its reply cut
to what the client said it can take (512 bytes or its EDNS size, RFC 6891
§6.2.5), with TC set when cut, so it retries over TCP; a client over TCP
is asked over TCP (RFC 7766 §6.2.1). Upstreams are tried in turn, the one
that answered last first, each for a short try within one deadline; no
answer by then is None (the caller says SERVFAIL).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Sequence

from dnslib import QTYPE, DNSRecord

from ..address import HostPort

TRY_TIMEOUT = 1.5  # seconds one upstream has to answer before the next is asked
TIMEOUT = 4.0  # seconds a forward may take in all: below a stub's 5 s, so it hears SERVFAIL
MIN_UDP = 512  # RFC 1035 §4.2.1
MAX_UDP = 4096  # what we pass back over UDP at most, whatever a client claims (RFC 6891 §6.2.5)


class UpstreamError(Exception):
    """An upstream's reply that is not the answer to what was asked."""


def question_end(packet: bytes) -> int:
    """Where the first question of a message ends (the header is 12 bytes;
    a name's labels end in a zero byte or a compression pointer)."""
    at = 12
    while at < len(packet):
        size = packet[at]
        if size & 0xC0:
            at += 2
            break
        at += 1 + size
        if size == 0:
            break
    return at + 4


def matches(asked: bytes, reply: bytes) -> bool:
    """Whether ``reply`` answers ``asked``: a response, same ID, same question."""
    end = question_end(asked)
    return len(reply) >= end and reply[:2] == asked[:2] and bool(reply[2] & 0x80) \
        and reply[4:6] == asked[4:6] and reply[12:end].lower() == asked[12:end].lower()


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP reply the client takes: 512, or its EDNS payload size."""
    sizes = [rr.rclass for rr in query.ar if rr.rtype == QTYPE.OPT]
    return min(MAX_UDP, max([MIN_UDP, *sizes]))


def fit(reply: bytes, limit: int) -> bytes:
    """``reply`` if it fits in ``limit`` bytes, else its header with TC and
    its question only (RFC 2181 §9: the client asks again over TCP)."""
    if len(reply) <= limit:
        return reply
    end = question_end(reply)
    return reply[:2] + bytes([reply[2] | 0x02, reply[3]]) + b"\x00\x01" + bytes(6) + reply[12:end]


class _Exchange(asyncio.DatagramProtocol):
    """One query to one upstream over UDP, on a socket connected to it (so
    the kernel takes datagrams from that address only)."""

    def __init__(self, packet: bytes) -> None:
        self.packet = packet
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.reply.done() and matches(self.packet, data):
            self.reply.set_result(data)  # anything else (forged, late, garbage) is ignored

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():  # ICMP port unreachable: nobody there, try the next one now
            self.reply.set_exception(exc)

    def expire(self) -> None:
        if not self.reply.done():
            self.reply.set_exception(asyncio.TimeoutError())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("closed"))


class Forwarder:
    def __init__(self, upstreams: Sequence[HostPort], try_timeout: float = TRY_TIMEOUT,
                 timeout: float = TIMEOUT) -> None:
        self.upstreams = tuple(upstreams)
        self.try_timeout = try_timeout
        self.timeout = timeout
        self.preferred = 0  # the upstream that answered last

    async def resolve(self, query: bytes, tcp: bool) -> bytes | None:
        """An upstream's reply to ``query``, with the query's own ID; None
        if none answered within the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        n = len(self.upstreams)
        for attempt in range(2 * n):  # each upstream twice: one lost datagram is no failure
            index = (self.preferred + attempt) % n
            left = deadline - loop.time()
            if left <= 0:
                break
            packet = secrets.token_bytes(2) + query[2:]
            upstream, wait = self.upstreams[index], min(self.try_timeout, left)
            try:
                reply = await (asyncio.wait_for(self._ask_tcp(upstream, packet), wait) if tcp
                               else self._ask_udp(upstream, packet, wait))
            except (OSError, EOFError, asyncio.TimeoutError, UpstreamError):
                continue
            self.preferred = index
            return query[:2] + reply[2:]
        return None

    @staticmethod
    async def _ask_udp(upstream: HostPort, packet: bytes, timeout: float) -> bytes:
        """One query from a socket of its own; its own timer rather than
        ``wait_for``, which makes a task per query."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in upstream.host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((upstream.host, upstream.port))  # numeric: no lookup, and only its datagrams come in
            transport, exchange = await loop.create_datagram_endpoint(lambda: _Exchange(packet), sock=sock)
        except BaseException:
            sock.close()
            raise
        timer = loop.call_later(timeout, exchange.expire)
        try:
            transport.sendto(packet)
            return await exchange.reply
        finally:
            timer.cancel()
            transport.close()

    @staticmethod
    async def _ask_tcp(upstream: HostPort, packet: bytes) -> bytes:
        """One query on a connection of its own (RFC 1035 §4.2.2 framing)."""
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = await reader.readexactly(size)
        finally:
            writer.close()
        if not matches(packet, reply):
            raise UpstreamError("the reply does not answer the query")
        return reply
