"""TFTP: requests on the server port in the shared asyncio loop, each
transfer on its own socket and port (its TID, RFC 1350 §4), all of them
served by one sender thread, many at once."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..events import Emit, Kind, no_events
from ..scripts import mac_of_script
from . import BUSY_POLL_US
from .files import FileSource, ReadError
from .transfer import ReadTransfer, TftpError, TftpFormatError, decode, error, parse_request

# what a client sends to a transfer: ACKs (4 bytes) and ERRORs (a message of at most
# a block: 516 bytes); a larger datagram is cut there and dropped as malformed.
# (recv allocates this much each time: 64 KiB cost more than the rest of an ACK)
RECEIVE_MAX = 1024
TIMER_TICK = 0.1  # seconds between looks for transfers whose ACK is overdue (their next_timer)
RECEIVE_TIMEOUT = struct.pack("ll", 0, int(TIMER_TICK * 1e6))  # SO_RCVTIMEO of a solo transfer's socket
BUSY_POLL = BUSY_POLL_US / 1e6  # seconds
MAX_SOLOS = 2  # transfers on threads of their own; one more and they all move to the shared sender
MAX_TRANSFERS = 512  # at once; more get "busy" and retry (each holds a socket)
MAX_PER_SOURCE = 64  # at once from one address: one host cannot take every transfer (a NAT is many machines)


class _Transfer:
    """One transfer on its own socket (a new port: its TID, RFC 1350 §4),
    connected to the client as tftpd-hpa's is: the kernel drops datagrams
    from any other address and port (§4's "unknown TID") before we see them,
    and send/recv need no address."""

    def __init__(self, transfer: ReadTransfer, peer: tuple[str, int], name: str, local: str,
                 family: socket.AddressFamily) -> None:
        self.transfer = transfer
        self.peer = peer
        self.file = name
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind((local, 0))
            self.sock.connect(peer)
        except OSError:
            self.sock.close()
            raise
        self.started = time.monotonic()

    def send(self, packets: list[bytes]) -> None:
        for p in packets:
            self.sock.send(p)
        self.transfer.prepare()  # the next block, built while the client takes this one

    def fail(self, e: OSError) -> None:
        """End the transfer on an error from its socket or its file. The
        client hears of a file it cannot have (as when it cannot be read at
        the request); a socket that fails is not tried again."""
        if isinstance(e, ReadError):
            self.transfer.fail(f"read error: {e}")
            with contextlib.suppress(OSError):
                self.sock.send(error(TftpError.ACCESS_VIOLATION, "cannot read the file"))
        else:
            self.transfer.fail(f"socket error: {e.strerror or e}")

    def begin(self, now: float) -> None:
        self.send(self.transfer.start(now))

    def tick(self, now: float) -> None:
        """The transfer's timer: past its deadline, the window again (or it gives up)."""
        packets = self.transfer.handle_timer(now)
        if packets:
            self.send(packets)

    def handle(self, data: bytes, counters: Counter[str], now: float) -> None:
        """A datagram that is not the expected lock-step ACK: the callers
        take that one first, on their fast paths."""
        try:
            packets = self.transfer.on_datagram(data, now)
        except TftpFormatError:
            counters["dropped_malformed"] += 1
            return
        if packets:
            self.send(packets)


def _due(timer: float | None, now: float) -> bool:
    """Whether a transfer's next_timer has come at ``now``."""
    return timer is not None and timer <= now


class _Solo(threading.Thread):
    """One of the first transfers (up to MAX_SOLOS at once), on its own
    thread, waiting for each ACK in recv: one system call per ACK where the
    shared sender needs two (epoll_wait, recv), and two transfers each keep
    a core with their client instead of sharing one thread. A lock-step
    transfer is bound by that round trip, so a transfer that is alone first
    polls for the ACK (``busy_poll``, as the kernel's SO_BUSY_POLL does for
    a NIC queue) and only then sleeps, waking at least every TIMER_TICK
    (the kernel's receive timeout, SO_RCVTIMEO) for its transfer's timer.
    Waking a sleeping thread costs more than the round trip itself on a
    fast link: a sleeping vCPU is halted and must be woken by an interrupt
    (docs/benchmarks.md, TFTP). The poll is adaptive:
    after a wait longer than ``busy_poll`` (a slow client or link) the next
    wait sleeps at once, so a slow transfer does not keep a core busy; two
    solo threads do not poll (each would hold the GIL from the other). When
    more transfers start, the solos move to the shared sender, which serves
    many at once without GIL hand-offs between threads."""

    def __init__(self, service: TftpService, x: _Transfer) -> None:
        super().__init__(name="tftp-solo", daemon=True)
        self.service = service
        self.x = x
        self.crowded = False  # set from the loop: move to the shared sender

    def run(self) -> None:
        x, t, counters, service = self.x, self.x.transfer, self.service.counters, self.service
        recv, send, handle = x.sock.recv, x.sock.send, x.handle
        clock, nowait, active = time.monotonic, socket.MSG_DONTWAIT, service.active
        waited = 0.0  # how long the last ACK took to come
        try:
            x.sock.setblocking(True)
            x.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RECEIVE_TIMEOUT)
            x.begin(clock())
            while not t.done and not service.closing:
                if self.crowded:
                    x.sock.setblocking(False)
                    service.to_sender(x)
                    return
                try:
                    data = None
                    start = clock()
                    if waited < service.busy_poll and len(active) == 1:
                        until = start + service.busy_poll
                        while data is None:
                            try:
                                data = recv(RECEIVE_MAX, nowait)
                            except BlockingIOError:
                                if clock() > until:
                                    break
                    if data is None:
                        data = recv(RECEIVE_MAX)
                    now = clock()
                    waited = now - start
                except BlockingIOError:  # a tick without a datagram: the timer's turn
                    waited = TIMER_TICK
                    x.tick(clock())
                    continue
                if data == t.expect:
                    # lock-step: the ACK of the block in flight; the next block
                    # was built while the client was busy, so it leaves at once
                    # (handle's fast path, inlined: this is the round trip).
                    packet = t.on_expected_ack(now)
                    if packet is not None:
                        send(packet)
                        t.prepare()
                else:
                    handle(data, counters, now)
                    x.tick(now)  # a client sending what moves nothing on still meets the timeout
        except OSError as e:
            x.fail(e)
        self.service.solo_ended(x)


class _Sender(threading.Thread):
    """Every transfer's socket on one epoll loop in one thread. A lock-step
    transfer is a 4-byte ACK in and a block out, thousands per second:
    a bare poll/recvfrom/sendto loop costs a fraction of a trip through
    asyncio, and one thread (not one per transfer) keeps a boot storm free
    of GIL hand-offs (docs/benchmarks.md, TFTP)."""

    def __init__(self, service: TftpService) -> None:
        super().__init__(name="tftp-sender", daemon=True)
        self.service = service
        self.epoll = select.epoll()
        self.transfers: dict[int, _Transfer] = {}
        self.new: queue.SimpleQueue[tuple[_Transfer, bool] | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.epoll.register(self.wake_r.fileno(), select.EPOLLIN)

    def add(self, transfer: _Transfer, begin: bool = True) -> None:
        """Serve ``transfer``: start it, or (``begin`` False) go on with one
        under way, a solo's: its deadline, on the same monotonic clock,
        holds here too."""
        self.new.put((transfer, begin))
        self.wake_w.send(b"\0")

    def stop(self) -> None:
        self.new.put(None)
        self.wake_w.send(b"\0")

    def run(self) -> None:
        counters = self.service.counters
        transfers, poll, monotonic = self.transfers, self.epoll.poll, time.monotonic
        next_check = 0.0
        try:
            while True:
                events = poll(TIMER_TICK)
                now = monotonic()  # one clock read per wake-up: deadlines need no finer grain
                released: list[tuple[_Transfer, bytes]] = []  # blocks whose ACK came in
                for fd, _ in events:
                    x = transfers.get(fd)
                    if x is None:
                        if not self._take_new(now):
                            return
                        continue
                    # One datagram per readiness event: epoll is level-triggered,
                    # so any further ACK is reported again, and a lock-step
                    # transfer (one ACK per block) saves the recv that would
                    # find nothing.
                    try:
                        data = x.sock.recv(RECEIVE_MAX)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        self._step(x, x.fail, e)
                        continue
                    t = x.transfer
                    if data == t.expect:  # lock-step: the ACK of the block in flight, its answer built already
                        packet = t.on_expected_ack(now)
                        if packet is None:  # that was the last block
                            self._end(x)
                        else:
                            released.append((x, packet))
                    else:
                        self._step(x, x.handle, data, counters, now)
                # The blocks go out back to back, their building after: each
                # send wakes a client, and wakeups close together are cheaper
                # (a CPU woken for one finds the next ones queued already).
                # Interleaved with the receives, the sender used 12-17 % more
                # CPU on a storm (docs/benchmarks.md, TFTP).
                for x, packet in released:
                    try:
                        x.sock.send(packet)
                    except OSError as e:
                        x.fail(e)
                for x, _ in released:
                    self._step(x, x.transfer.prepare)  # a failed send ends here
                if now < next_check:
                    continue  # timeouts are checked a few times a second, not after every packet
                next_check = now + TIMER_TICK
                for x in [x for x in transfers.values() if _due(x.transfer.next_timer(), now)]:
                    self._step(x, x.tick, now)
        finally:
            for x in list(self.transfers.values()):
                self._end(x)
            self.epoll.close()
            self.wake_r.close()
            self.wake_w.close()

    def _take_new(self, now: float) -> bool:
        """Register queued transfers; False when told to stop."""
        try:
            self.wake_r.recv(4096)
        except BlockingIOError:
            pass
        while True:
            try:
                item = self.new.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            x, begin = item
            self.transfers[x.sock.fileno()] = x
            self.epoll.register(x.sock.fileno(), select.EPOLLIN)
            if begin:
                self._step(x, x.begin, now)

    def _step(self, x: _Transfer, action: Callable[..., None], *args: object) -> None:
        """Move a transfer on; a socket or read error fails it; a finished one ends."""
        try:
            action(*args)
        except OSError as e:
            x.fail(e)
        if x.transfer.done:
            self._end(x)

    def _end(self, x: _Transfer) -> None:
        fd = x.sock.fileno()
        if self.transfers.pop(fd, None) is not None:
            self.epoll.unregister(fd)
        x.sock.close()
        self.service.from_thread(self.service.finished, x)


class TftpService(asyncio.DatagramProtocol):
    def __init__(self, files: FileSource, host: str = "0.0.0.0", port: int = 69,
                 busy_poll: float = BUSY_POLL, emit: Emit = no_events,
                 mac_at: Callable[[str], str | None] = lambda ip: None) -> None:
        self.files = files
        self.max_per_source = MAX_PER_SOURCE
        self.emit = emit
        self.mac_at = mac_at  # the MAC of a client address, where the fleet knows it
        self.host = host
        self.port = port
        self.busy_poll = busy_poll  # seconds; 0: a solo transfer sleeps for every ACK
        self.transport: asyncio.DatagramTransport | None = None
        self.active: set[_Transfer] = set()
        self.counters: Counter[str] = Counter()
        self._sender: _Sender | None = None
        self.closing = False
        self._solos: set[_Solo] = set()  # the transfers on threads of their own
        self.loop: asyncio.AbstractEventLoop | None = None
        self._requests: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port), reuse_port=False)
        self.loop = loop
        self._sender = _Sender(self)
        self._sender.start()

    def finished(self, x: _Transfer) -> None:
        """On the loop: a transfer ended (sent, failed, or stopped)."""
        t = x.transfer
        if t.failed or not t.done:
            self.counters["failed"] += 1
            self._said(Kind.TFTP_FAILED, x.peer[0], x.file, why=t.failed or "stopped",
                       seconds=round(time.monotonic() - x.started, 4))
        else:
            self.counters["sent"] += 1
            self._said(Kind.TFTP_SENT, x.peer[0], x.file, bytes=len(t.data),
                       seconds=round(time.monotonic() - x.started, 4))
        self.active.discard(x)

    def _said(self, kind: Kind, peer: str, name: str, **fields: object) -> None:
        """A transfer's event, with the requester's MAC where it is known
        (a machine's own script names it; else its address does)."""
        self.emit(kind, mac=mac_of_script(name) or self.mac_at(peer), peer=peer, file=name, **fields)

    def to_sender(self, x: _Transfer) -> None:
        """From a solo thread: its transfer goes on on the shared sender."""
        assert self._sender is not None
        self._sender.add(x, begin=False)
        self.from_thread(self._solo_gone, x)

    def solo_ended(self, x: _Transfer) -> None:
        """From a solo thread: its transfer is over."""
        x.sock.close()
        self.from_thread(self._solo_gone, x)
        self.from_thread(self.finished, x)

    def from_thread(self, call: Callable[[_Transfer], None], x: _Transfer) -> None:
        """Run ``call(x)`` on the loop, from a sender or solo thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(call, x)

    def _solo_gone(self, x: _Transfer) -> None:
        self._solos = {s for s in self._solos if s.x is not x}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._request(data, addr))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _request(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        try:
            req = parse_request(decode(data))
        except TftpFormatError as e:
            self.counters["dropped_malformed"] += 1
            self.emit(Kind.TFTP_MALFORMED, peer=addr[0], why=str(e))
            return
        except PermissionError as e:
            self.transport.sendto(error(TftpError.ILLEGAL_OPERATION, str(e)), addr)
            return
        local = self.transport.get_extra_info("sockname")[0]
        try:
            payload = self.files.open(req.filename, addr[0], local)  # a large file comes in as it is sent
        except FileNotFoundError as e:
            self.counters["not_found"] += 1
            self.transport.sendto(error(TftpError.FILE_NOT_FOUND, str(e)), addr)
            self._said(Kind.TFTP_NOT_FOUND, addr[0], req.filename, why=str(e))
            return
        except (PermissionError, OSError) as e:
            self.counters["refused"] += 1
            self.transport.sendto(error(TftpError.ACCESS_VIOLATION, str(e) if isinstance(e, PermissionError)
                                        else "cannot read the file"), addr)
            self._said(Kind.TFTP_REFUSED, addr[0], req.filename, why=str(e))
            return
        if sum(1 for x in self.active if x.peer[0] == addr[0]) >= self.max_per_source:
            self.counters["busy_source"] += 1
            self.transport.sendto(error(TftpError.NOT_DEFINED, "too many transfers from your address"), addr)
            return
        if len(self.active) >= MAX_TRANSFERS:
            self.counters["busy"] += 1
            self.transport.sendto(error(TftpError.NOT_DEFINED, "server busy, try again"), addr)
            return
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        try:
            transfer = _Transfer(ReadTransfer(req, payload), addr, req.filename, local, family)
        except OSError as e:  # out of ports or descriptors: this client, not the service
            self.counters["failed"] += 1
            self._said(Kind.TFTP_FAILED, addr[0], req.filename, why=str(e))
            return
        assert self._sender is not None
        if len(self._solos) == len(self.active) < MAX_SOLOS:  # none on the shared sender yet
            solo = _Solo(self, transfer)
            self._solos.add(solo)
            self.active.add(transfer)  # before it runs: it polls only while it is the one transfer
            solo.start()
        else:
            for solo in self._solos:
                solo.crowded = True
            self._sender.add(transfer)
            self.active.add(transfer)

    async def stop(self) -> None:
        self.closing = True
        if self._sender is not None:
            self._sender.stop()
        if self.transport is not None:
            self.transport.close()
