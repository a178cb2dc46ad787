"""iSNS over TCP and UDP in the shared asyncio loop (RFC 4171 §5: port
3205, one message at a time per connection, responses in request order),
plus what the server starts on its own: State Change Notifications
(§5.6.5.8), Entity Status Inquiries (§5.6.5.13), registration expiry
(§6.2.6), heartbeats (§5.6.5.14), and writing the store after each change.

Messages for an entity go to the SCN/ESI port it registered (TCP, or UDP
when the port says so); an entity that registered none gets them over the
last connection one of its nodes holds open to us, as open-iscsi's iscsid
and tgt keep one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable

from .codec import (Header, Heartbeat, IsnsFormatError, Message, Reassembler, address, display, encode_message,
                    unpack_header)
from .events import OnEvent, logfmt, peer_text
from .limits import DIRECT, LOOPBACK, Connections, ControlAddresses, Gate, Limits, Network, Origin, UdpJoins
from .protocol import DEFAULT_PORT, HEADER_SIZE, RESPONSE, Function, Status, Tag, function_name
from .registry import Registry
from .scn import Address, Notice
from .store import Store

log = logging.getLogger("isns.server")

SEND_TIMEOUT = 5.0  # seconds for connecting to an SCN/ESI port and hearing its answer
TIMER_CEILING = 30.0  # the timer wakes at least this often, so clock jumps are caught
SWEEPS = 4  # looks for silent connections per idle (or reassembly) timeout


class IsnsServer:
    def __init__(self, registry: Registry, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                 clock: Callable[[], float] = time.time, store: Store | None = None, udp: bool = True,
                 heartbeat: tuple[str, int, int] | None = None, on_event: OnEvent | None = None,
                 limits: Limits = Limits(), control_addresses: Iterable[str | Network] = LOOPBACK) -> None:
        """``heartbeat``: (address, UDP port, interval s) to announce this
        server to. ``on_event(what, fields)``: told of what the server meets
        (isns/events.py), instead of its logging them; the events of a
        failure (isns.error, isns.store_failed) are told inside the
        ``except`` block, so ``sys.exc_info()`` holds the exception.
        ``limits``: what one client may cost (isns/limits.py);
        ``control_addresses``: the networks a control node's name is
        believed from, besides the server's own address."""
        self.registry = registry
        self.host = host
        self.port = port
        self.clock = clock
        self.store = store
        self.udp = udp
        self.heartbeat = heartbeat
        self.on_event = on_event
        self._server: asyncio.Server | None = None
        self._datagrams: asyncio.DatagramTransport | None = None
        self.limits = limits
        self.control = ControlAddresses(control_addresses)
        self._clients: dict[asyncio.Transport, _Connection] = {}
        self._connections = Connections(limits)
        self._udp = UdpJoins(limits)
        self._gate = Gate()
        self._tcp_held = 0  # bytes of messages begun over all TCP connections
        self._by_entity: dict[str, asyncio.Transport] = {}  # the last connection each entity used
        self._port_locks: dict[Address, asyncio.Lock] = {}  # per SCN/ESI port of a client
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._sleep_until = 0.0  # when the timer wakes next by itself

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        if self.udp:
            self._datagrams, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                                     local_addr=(self.host, self.port))
        self._spawn(self._timer())
        if min(self.limits.idle_timeout, self.limits.reassembly_timeout) < math.inf:
            self._spawn(self._reap())
        if self.heartbeat is not None:
            self._spawn(self._announce(*self.heartbeat))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._datagrams is not None:
            self._datagrams.close()
        for task in list(self._tasks):
            task.cancel()
        for w in list(self._clients):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._save()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def event(self, what: str, fields: dict[str, object], level: int = logging.INFO) -> None:
        """Tell ``on_event``, else log one logfmt line (with the exception
        being handled, if any, at level ERROR)."""
        if self.on_event is not None:
            self.on_event(what, fields)
        elif log.isEnabledFor(level):
            log.log(level, "%s", logfmt(what, fields), exc_info=level >= logging.ERROR)

    def limited(self, reason: str, peer: object, why: str) -> None:
        """A bound was hit (isns.limited): told at most once a second per
        ``reason``, with how many were held back since the last."""
        held_back = self._gate.pass_(reason, time.monotonic())
        if held_back is not None:
            self.event("isns.limited", {"peer": peer_text(peer), "reason": reason, "why": why,
                                        "held_back": held_back}, logging.WARNING)

    def held(self) -> int:
        """Bytes of messages begun and not ended, over TCP and UDP."""
        return self._udp.held + self._tcp_held

    # -- requests -------------------------------------------------------------------

    def answer(self, msg: Message, peer: object, origin: Origin = DIRECT) -> Message | None:
        """The registry's response, then the side effects: store, notices."""
        try:
            reply = self.registry.handle(msg, self.clock(), origin)
        except Exception as e:  # a bug must not end the service: answer and keep serving
            self.event("isns.error", {"peer": peer_text(peer), "function": function_name(msg.function),
                                      "why": _why(e)}, logging.ERROR)
            reply = Message(msg.function | RESPONSE, msg.xid, status=Status.INTERNAL_ERROR)
        else:
            if msg.function == Function.DEV_ATTR_QRY and reply is not None and msg.source is not None:
                # a node asking what it may see (an initiator discovering its
                # target): a step of its boot for a host's flight recorder
                self.event("isns.queried", {"source": str(msg.source.value), "peer": peer_text(peer),
                                            "status": int(reply.status)}, logging.DEBUG)
        self._after_change()
        return reply

    def _after_change(self) -> None:
        if self.store is not None:
            self._save()
        if self.registry.notices:
            for notice in self.registry.take_notices():
                self._spawn(self._deliver(notice))
        if self.registry.due < self._sleep_until:
            self._wake.set()  # a registration period or ESI interval ends before the timer would look

    def _save(self) -> None:
        if self.store is None:
            return
        try:
            self.store.save(self.registry)
        except Exception as e:  # a full disk must not stop the name service: say so and keep serving
            self.event("isns.store_failed", {"why": _why(e)}, logging.ERROR)

    def _remember_connection(self, msg: Message, transport: asyncio.Transport) -> None:
        source = msg.source
        node = self.registry.nodes.get(str(source.value)) if source is not None else None
        if node is not None:
            self._by_entity[node.entity] = transport

    def _disconnected(self, transport: asyncio.Transport) -> None:
        self._clients.pop(transport, None)
        for eid in [e for e, t in self._by_entity.items() if t is transport]:
            del self._by_entity[eid]

    def _response(self, msg: Message) -> None:
        if msg.function == Function.ESI | RESPONSE and msg.status == Status.SUCCESS:
            values = {a.tag: a.value for a in msg.attrs}
            eid, addr, port = (values.get(Tag.ENTITY_IDENTIFIER), values.get(Tag.PORTAL_IP_ADDRESS),
                               values.get(Tag.PORTAL_PORT))
            if isinstance(eid, str) and isinstance(addr, ipaddress.IPv6Address) and port is not None:
                self.registry.esi_answered(eid, (addr, port), self.clock())  # type: ignore[arg-type]
        elif msg.status not in (Status.SUCCESS, None):
            status = msg.status.name if isinstance(msg.status, Status) else msg.status
            self.event("isns.notice_refused", {"function": function_name(msg.function & ~RESPONSE),
                                               "status": status})

    # -- what the server sends on its own ---------------------------------------------

    async def _deliver(self, notice: Notice) -> None:
        what = "esi" if notice.message.function == Function.ESI else "scn"
        if not notice.targets:
            transport = self._by_entity.get(notice.entity)
            if transport is None:
                self.event(f"isns.{what}_undeliverable", {"entity": notice.entity,
                                                          "why": "no port and no open connection"})
                return
            _send(transport, notice.message)  # the answer comes back through _Connection
            return
        for target in notice.targets:
            try:
                # one message at a time per port: tgt keeps one SCN socket and
                # spins when a second connection arrives while the first is open
                async with self._port_locks.setdefault(target, asyncio.Lock()):
                    reply = await asyncio.wait_for(_exchange(target, notice.message), SEND_TIMEOUT)
            except (OSError, asyncio.TimeoutError, IsnsFormatError) as e:
                self.event(f"isns.{what}_failed", {"entity": notice.entity,
                                                   "peer": f"{display(target[0])}:{target[1].number}",
                                                   "why": str(e) or type(e).__name__})  # a timeout's str() is empty
                continue
            if reply is not None:
                self._response(reply)

    async def _timer(self) -> None:
        """Expire registrations and send ESI probes when due."""
        while True:
            now = self.clock()
            if now >= self.registry.due:
                gone = self.registry.expire(now)
                if gone:
                    self.event("isns.expired", {"entities": ",".join(gone)})
                self.registry.esi_due(now)
                self.registry.due = self.registry.next_timer()
                self._after_change()
            self._wake.clear()
            delay = min(max(self.registry.due - now, 0.05), TIMER_CEILING)
            self._sleep_until = now + delay
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _reap(self) -> None:
        """Close TCP connections silent for ``idle_timeout`` (each holds a
        descriptor and a slot), and drop the messages begun longer than
        ``reassembly_timeout`` ago, over TCP and UDP. A connection an entity's SCNs and ESIs
        go over stays while it does. A sweep, not a timer per connection:
        a PDU only notes when it came."""
        limits = self.limits
        every = min(limits.idle_timeout, limits.reassembly_timeout) / SWEEPS
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            if self._udp.senders and self._udp.expire(now):
                self.limited("reassembly_timeout", None, "a UDP message not ended in time was dropped")
            kept = set(self._by_entity.values())
            for transport, conn in list(self._clients.items()):
                if conn.joined.open and conn.expire(now):
                    self.limited("reassembly_timeout", conn.peer, "a message not ended in time was dropped")
                if now - conn.heard > limits.idle_timeout and transport not in kept:
                    self.limited("idle", conn.peer, f"silent for {limits.idle_timeout:g} s")
                    transport.close()

    async def _announce(self, host: str, port: int, interval: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        counter = 0
        try:
            while True:
                me = address(self.host if self.host not in ("0.0.0.0", "::") else "0.0.0.0")
                transport.sendto(Heartbeat(me, self.port, self.port if self.udp else 0, interval, counter).pack())
                counter += 1
                await asyncio.sleep(interval)
        finally:
            transport.close()


class _Connection(asyncio.Protocol):
    """One TCP client: PDUs are read from the stream, each request answered
    in order (§5). A Protocol rather than asyncio streams: a request is
    handled in the data_received call that completes it, with no task to
    wake for its header and again for its payload (py-spy: that machinery
    and the event loop took about a third of the time per query)."""

    def __init__(self, server: IsnsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        # what has come and is not yet a whole PDU, and how long it must grow
        # before there is one: usually nothing, as a request tends to come in
        # one piece and is then cut from what was received without a copy
        self.pending = bytearray()
        self.needed = HEADER_SIZE
        self.joined = server.limits.reassembler()
        self.heard = time.monotonic()  # when data last came (IsnsServer._reap)
        self.host = ""  # counted in the server's Connections under this address ("": not admitted)
        self.origin = Origin()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        host = str(self.peer[0]) if isinstance(self.peer, tuple) else str(self.peer)
        refused = self.server._connections.admit(host)
        if refused is not None:
            self.server.limited("connections", self.peer, refused)
            transport.close()
            return
        self.host = host
        local = transport.get_extra_info("sockname")
        self.origin = self.server.control.origin(host, str(local[0]) if isinstance(local, tuple) else None)
        self.server._clients[self.transport] = self  # type: ignore[index]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and self.host:
            self.server._connections.release(self.host)
            self.server._disconnected(self.transport)
            self.server._tcp_held -= self.joined.held

    def _join(self, header: Header, payload: bytes, now: float) -> Message | None:
        """The message ``payload`` ends, if it does, with every connection's
        half-joined bytes together bounded too (Limits.tcp_bytes): each
        connection's own bound times the connections allowed is more than
        the server should hold."""
        joined, server = self.joined, self.server
        before = joined.held
        try:
            msg = joined.feed(header, payload, now)
        finally:
            server._tcp_held += joined.held - before
        if joined.held > before and server._tcp_held > server.limits.tcp_bytes:
            raise IsnsFormatError(f"messages begun over all connections past {server.limits.tcp_bytes} bytes")
        return msg

    def expire(self, now: float) -> int:
        before = self.joined.held
        dropped = self.joined.expire(now)
        self.server._tcp_held += self.joined.held - before
        return dropped

    # the client does not read its responses: stop reading its requests until
    # it does, as streams' drain() did
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport, server = self.transport, self.server
        assert transport is not None
        if not self.host:
            return  # refused at connection_made: closing
        self.heard = now = time.monotonic()  # also the reassembler's clock
        if self.pending:
            self.pending += data
            if len(self.pending) < self.needed:
                return
            data = bytes(self.pending)
            self.pending.clear()
        pos = 0
        replies: list[bytes] = []  # written at once when this data is used up
        while len(data) - pos >= HEADER_SIZE:
            head = data[pos:pos + HEADER_SIZE]
            try:
                header = unpack_header(head)
                end = pos + HEADER_SIZE + header.length
                if len(data) < end:
                    break  # the rest of this PDU is still on its way
                msg = self._join(header, data[pos + HEADER_SIZE:end], now)
            except IsnsFormatError as e:
                # the stream cannot be trusted past a bad PDU: say so if we can, then close
                server.event("isns.malformed", {"peer": peer_text(self.peer), "why": str(e)})
                if not head[2] & 0x80:  # a request: answer it
                    replies.extend(encode_message(_format_error(head)))
                if replies:
                    transport.write(b"".join(replies))
                transport.close()  # once what is written is sent
                return
            pos = end
            if msg is None:
                continue  # more PDUs to come
            if msg.is_response:
                server._response(msg)  # to an SCN or ESI we sent over this connection
                continue
            reply = server.answer(msg, self.peer, self.origin)
            server._remember_connection(msg, transport)  # after: a registration's node exists only now
            if reply is not None:
                replies.extend(encode_message(reply))
        if pos < len(data):  # a PDU begun: its header, if whole, is the one parsed last
            self.pending += data[pos:]
            self.needed = HEADER_SIZE if len(self.pending) < HEADER_SIZE else HEADER_SIZE + header.length
        if replies:
            transport.write(replies[0] if len(replies) == 1 else b"".join(replies))


class _Datagrams(asyncio.DatagramProtocol):
    """iSNSP over UDP: each datagram one PDU; a message's PDUs are joined
    per sender (§5.4)."""

    def __init__(self, server: IsnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.local = None if server.host in ("", "0.0.0.0", "::") else server.host  # the server's own address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = unpack_header(data)
            if len(data) < HEADER_SIZE + header.length:
                raise IsnsFormatError("a datagram shorter than its PDU length")
            msg = self.server._udp.feed(addr, header, data[HEADER_SIZE:HEADER_SIZE + header.length],
                                        time.monotonic())
        except IsnsFormatError as e:
            self.server.event("isns.malformed", {"peer": peer_text(addr), "why": str(e)})
            self.server._udp.forget(addr)
            if len(data) >= 4 and not data[2] & 0x80 and self.transport is not None:
                for pdu in encode_message(_format_error(data)):
                    self.transport.sendto(pdu, addr)
            return
        if msg is None:
            return
        if msg.is_response:
            self.server._response(msg)
            return
        reply = self.server.answer(msg, addr, self.server.control.origin(str(addr[0]), self.local))
        if reply is not None and self.transport is not None:
            for pdu in encode_message(reply):
                self.transport.sendto(pdu, addr)


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def _format_error(head: bytes) -> Message:
    fn = int.from_bytes(head[2:4], "big")
    xid = int.from_bytes(head[8:10], "big") if len(head) >= 10 else 0
    return Message(fn | RESPONSE, xid, status=Status.MESSAGE_FORMAT_ERROR)


def _send(writer: asyncio.StreamWriter | asyncio.WriteTransport, msg: Message) -> None:
    writer.write(b"".join(encode_message(msg)))


async def _exchange(target: Address, msg: Message) -> Message | None:
    """Send one message to a client's SCN/ESI port and return its answer."""
    host, port = display(target[0]), target[1]
    if port.udp:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not answer.done():
                    answer.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Once, remote_addr=(host, port.number))
        try:
            for pdu in encode_message(msg):
                transport.sendto(pdu)
            data = await answer
        finally:
            transport.close()
        header = unpack_header(data)
        return Reassembler().feed(header, data[HEADER_SIZE:HEADER_SIZE + header.length])
    reader, writer = await asyncio.open_connection(host, port.number)
    try:
        _send(writer, msg)
        await writer.drain()
        joined = Reassembler()
        while True:
            header = unpack_header(await reader.readexactly(HEADER_SIZE))
            reply = joined.feed(header, await reader.readexactly(header.length))
            if reply is not None:
                return reply
    finally:
        writer.close()
