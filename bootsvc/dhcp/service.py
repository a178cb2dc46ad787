"""DHCP on a UDP socket in the shared asyncio loop (no sniffing, no raw
sockets): port 67 bound to one interface, replies sent as RFC 2131 §4.1
says: to the relay when there is one, to the client's address when it has
one, else broadcast on the interface.

The socket is read in batches: every datagram waiting when it becomes
readable (up to BATCH), each decided in memory; then the batch's leases are
written together and its ACKs leave once they are durable
(bootsvc/dhcp/group_commit.py). One wake-up, one fsync, many clients."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..events import Kind
from ..inventory import Machine
from .group_commit import Ack, Address, Datagram, group_commit
from .message import ANY, DhcpFormatError, IPv4, MessageType, Request, decode, encode
from .responder import Responder
from .settings import DhcpSettings, Socket, sockets

SERVER_PORT = 67
CLIENT_PORT = 68
RECEIVE_BUFFER = 4 << 20  # bytes (the kernel caps it at net.core.rmem_max)
PXE_PORT = 4011  # proxyDHCP requests and boot server discovery (PXE spec §2.2.5)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
BATCH = 256  # datagrams read per wake-up before the loop serves others
MAX_DATAGRAM = 1500  # a DHCP request bigger than an Ethernet frame is not one we answer
Adopt = Callable[[str], Awaitable[Machine | None]]  # unknown_machines: default (bootsvc/fleet.py)


class Sender(Protocol):
    """Where replies go: the socket (or a test's stand-in)."""

    def sendto(self, data: bytes, address: Address, /) -> object: ...


class DhcpService:
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
        self.transport: Sender | None = None
        self.commits = group_commit(responder.leases, self._write_failed)
        self._sock: socket.socket | None = None

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
        self._sock = self.transport = sock
        self.commits.start(loop)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        """Every datagram waiting (up to BATCH), then their answers."""
        assert self._sock is not None
        batch = []
        recvfrom = self._sock.recvfrom
        for _ in range(BATCH):
            try:
                batch.append(recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                self.responder.counters["receive_errors"] += 1
                self.responder.emit(Kind.DHCP_ERROR, why=f"receive failed: {e.strerror or e}")
                break
        self.received(batch)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """One datagram, as a batch of its own."""
        self.received([(data, addr)])

    def received(self, batch: list[Datagram]) -> None:
        """Decide every request of ``batch``; the replies go at once, the
        ACKs after the batch's leases are durable."""
        acks: list[Ack] = []
        now = self.clock()
        for data, addr in batch:
            req = self._decode(data, addr)
            if req is None:
                continue
            if self.adopt is not None and self.responder.wants_adoption(req, now):
                # making the new machine's disk is slow work: off the loop, then the answer
                task = asyncio.get_running_loop().create_task(self._adopt_then_answer(req, addr))
                self._adopting.add(task)
                task.add_done_callback(self._adopting.discard)
                continue
            self._answer(req, addr, now, acks)
        self.commits.send_after(self, acks)
        self.commits.flush()

    def _decode(self, data: bytes, addr: Address) -> Request | None:
        counters = self.responder.counters
        try:
            req = decode(data)
        except DhcpFormatError as e:
            counters["dropped_malformed"] += 1
            self.responder.emit(Kind.DHCP_MALFORMED, peer=f"{addr[0]}:{addr[1]}", why=str(e))
            return None
        counters[RECEIVED[req.msg_type]] += 1
        return req

    async def _adopt_then_answer(self, req: Request, addr: Address) -> None:
        assert self.adopt is not None
        await self.adopt(req.mac)
        acks: list[Ack] = []
        self._answer(req, addr, self.clock(), acks)
        self.commits.send_after(self, acks)
        self.commits.flush()

    def _answer(self, req: Request, addr: Address, now: float, acks: list[Ack]) -> None:
        """The reply to ``req``: sent now, or added to ``acks`` (an ACK waits
        for the group commit)."""
        try:
            reply = self.responder.handle(req, self.address, now)
            if reply is None:
                return
            data, dest = encode(reply), self._destination(req, addr, reply.msg_type)
        except Exception as e:  # a bug must not end the service: count it, keep serving
            self.responder.counters["errors"] += 1
            self.responder.emit(Kind.DHCP_ERROR, mac=req.mac, why=repr(e))  # logged with its traceback
            return
        if reply.msg_type is MessageType.ACK:
            acks.append((data, dest, reply.said))
        else:
            self._send_one(data, dest)

    def _destination(self, req: Request, addr: Address, reply: MessageType) -> Address:
        if self.reply_to_source:
            return addr
        if req.giaddr != ANY:
            return (_text(req.giaddr), SERVER_PORT)
        if req.ciaddr != ANY and reply is not MessageType.NAK:
            return (_text(req.ciaddr), CLIENT_PORT)
        # No ARP entry for an address the client does not have yet:
        # broadcast, which every client accepts (RFC 2131 §4.1).
        return ("255.255.255.255", CLIENT_PORT)

    def _send_one(self, data: bytes, dest: Address) -> bool:
        """Hand one reply to the socket; False if it would not take it."""
        if self.transport is None:
            return False
        try:
            self.transport.sendto(data, dest)
        except OSError:  # a full send buffer or a vanished route: the client asks again
            self.responder.counters["send_failed"] += 1
            return False
        self.responder.counters[SENT[data[OPTIONS_AT + 2]]] += 1
        return True

    def send_acks(self, acks: list[Ack]) -> list[bool]:
        """A group's ACKs, their leases durable, to the socket (called in the
        group commit's thread): which ones it took. Counted and said on the
        loop (:meth:`acks_sent`)."""
        transport = self.transport
        sent = []
        for data, dest, _ in acks:
            try:
                if transport is None:
                    raise OSError("closed")
                transport.sendto(data, dest)
                sent.append(True)
            except OSError:  # a full send buffer or a vanished route: the client asks again
                sent.append(False)
        return sent

    def acks_sent(self, acks: list[Ack], sent: list[bool]) -> None:
        """Each ACK that left is counted and said (dhcp.ack) only now, after
        its lease was written, so no event tells of an ACK that a failed
        write kept back."""
        counters, emit = self.responder.counters, self.responder.emit
        for (_, _, said), taken in zip(acks, sent):
            if not taken:
                counters["send_failed"] += 1
                continue
            counters["sent_ack"] += 1
            if said is not None:
                emit(Kind.DHCP_ACK, **said)  # type: ignore[arg-type]

    def _write_failed(self, error: BaseException, acks: list[Ack]) -> None:
        """The lease store could not write a group: its ACKs are not sent,
        and each client's is said withheld (its machine's boot shows why)."""
        self.responder.counters["errors"] += 1
        self.responder.counters["acks_not_sent"] += len(acks)
        emit = self.responder.emit
        emit(Kind.DHCP_ERROR, why=f"the lease store could not write ({error}): {len(acks)} ACKs not sent")
        why = f"the lease store could not write: {error}"
        for _, _, said in acks:
            if said is not None:
                emit(Kind.DHCP_ACK_WITHHELD, mac=said.get("mac"), ip=said.get("ip"),  # type: ignore[arg-type]
                     hostname=said.get("hostname"), why=why)  # type: ignore[arg-type]

    async def stop(self) -> None:
        for task in list(self._adopting):
            task.cancel()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        await self.commits.stop()  # the ACKs of leases being written still leave
        if self._sock is not None:
            self._sock.close()
            self._sock = self.transport = None


def dhcp_services(d: DhcpSettings, responder: Responder, adopt: Adopt | None) -> list[tuple[Socket, DhcpService]]:
    """The services of ``d``'s sockets, all answering from ``responder``."""
    return [(s, DhcpService(responder, s.listener.address, s.listener.interface, s.port, reply_to_source=s.proxy_port,
                            adopt=adopt)) for s in sockets(d)]


@functools.lru_cache(maxsize=1024)
def _text(address: IPv4) -> str:
    """An address as sendto wants it: the same relays on most packets."""
    return str(address)


# counter names by message type, made once (not an f-string per packet)
RECEIVED = {t: f"received_{t.name.lower()}" for t in MessageType}
SENT = {int(t): f"sent_{t.name.lower()}" for t in MessageType}
OPTIONS_AT = 240  # encode() puts the message type (option 53) first after the cookie
