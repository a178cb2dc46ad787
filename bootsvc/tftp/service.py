"""TFTP: requests on the server port in the shared asyncio loop, each
transfer on its own socket and port (its TID, RFC 1350 §4), all of them
served by one sender thread, many at once."""

from __future__ import annotations

import asyncio
import logging
import queue
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from .files import FileSource
from .transfer import ReadTransfer, TftpError, TftpFormatError, decode, error, parse_request

log = logging.getLogger("bootsvc.tftp")
TIMEOUT = 1.0  # seconds without an answer before a window is sent again
ACK_OPCODE = 4
RECEIVE_MAX = 65536
TIMER_TICK = 0.1  # seconds between looks for transfers whose ACK is overdue
MAX_TRANSFERS = 512  # at once; more get "busy" and retry (each holds a socket)


class _Transfer:
    """One transfer on its own socket (a new port: its TID, RFC 1350 §4)."""

    def __init__(self, transfer: ReadTransfer, peer: tuple[str, int], name: str, local: str,
                 family: socket.AddressFamily) -> None:
        self.transfer = transfer
        self.peer = peer
        self.file = name
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((local, 0))
        self.deadline = 0.0

    def send(self, packets: list[bytes]) -> None:
        for p in packets:
            self.sock.sendto(p, self.peer)
        self.deadline = time.monotonic() + TIMEOUT

    def begin(self) -> None:
        self.send(self.transfer.start())

    def retry(self) -> None:
        """No ACK in time: send the window again (or give up)."""
        self.send(self.transfer.on_timeout())

    def readable(self, counters: Counter[str]) -> None:
        t = self.transfer
        while not t.done:
            try:
                data, addr = self.sock.recvfrom(RECEIVE_MAX)
            except (BlockingIOError, InterruptedError):
                return
            if addr[:2] != self.peer[:2]:
                self.sock.sendto(error(TftpError.UNKNOWN_TID, "unknown transfer ID"), addr)
                continue
            if len(data) == 4 and data[1] == ACK_OPCODE and data[0] == 0:
                packets = t.on_ack(int.from_bytes(data[2:], "big"))  # the hot path: no packet object
            else:
                try:
                    packets = t.on_packet(decode(data))
                except TftpFormatError:
                    counters["dropped_malformed"] += 1
                    continue
            if packets:
                self.send(packets)


class _Sender(threading.Thread):
    """Every transfer's socket on one epoll loop in one thread. A lock-step
    transfer is a 4-byte ACK in and a block out, thousands per second:
    a bare poll/recvfrom/sendto loop costs a fraction of a trip through
    asyncio, and one thread (not one per transfer) keeps a boot storm free
    of GIL hand-offs (docs/benchmarks.md, TFTP)."""

    def __init__(self, service: TftpService) -> None:
        super().__init__(name="tftp-sender", daemon=True)
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.epoll = select.epoll()
        self.transfers: dict[int, _Transfer] = {}
        self.new: queue.SimpleQueue[_Transfer | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.epoll.register(self.wake_r.fileno(), select.EPOLLIN)

    def add(self, transfer: _Transfer) -> None:
        self.new.put(transfer)
        self.wake_w.send(b"\0")

    def stop(self) -> None:
        self.new.put(None)
        self.wake_w.send(b"\0")

    def run(self) -> None:
        counters = self.service.counters
        next_check = 0.0
        try:
            while True:
                events = self.epoll.poll(TIMER_TICK)
                for fd, _ in events:
                    x = self.transfers.get(fd)
                    if x is None:
                        if not self._take_new():
                            return
                        continue
                    self._step(x, x.readable, counters)
                now = time.monotonic()
                if now < next_check:
                    continue  # timeouts are checked a few times a second, not after every packet
                next_check = now + TIMER_TICK
                for x in [x for x in self.transfers.values() if x.deadline <= now]:
                    self._step(x, x.retry)
        finally:
            for x in list(self.transfers.values()):
                self._end(x)
            self.epoll.close()
            self.wake_r.close()
            self.wake_w.close()

    def _take_new(self) -> bool:
        """Register queued transfers; False when told to stop."""
        try:
            self.wake_r.recv(4096)
        except BlockingIOError:
            pass
        while True:
            try:
                x = self.new.get_nowait()
            except queue.Empty:
                return True
            if x is None:
                return False
            self.transfers[x.sock.fileno()] = x
            self.epoll.register(x.sock.fileno(), select.EPOLLIN)
            self._step(x, x.begin)

    def _step(self, x: _Transfer, action: Callable[..., None], *args: object) -> None:
        """Move a transfer on; a socket error fails it; a finished one ends."""
        try:
            action(*args)
        except OSError as e:
            x.transfer.done, x.transfer.failed = True, f"socket error: {e.strerror or e}"
        if x.transfer.done:
            self._end(x)

    def _end(self, x: _Transfer) -> None:
        fd = x.sock.fileno()
        if self.transfers.pop(fd, None) is not None:
            self.epoll.unregister(fd)
        x.sock.close()
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.service.finished, x)


class TftpService(asyncio.DatagramProtocol):
    def __init__(self, files: FileSource, host: str = "0.0.0.0", port: int = 69) -> None:
        self.files = files
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.active: set[_Transfer] = set()
        self.counters: Counter[str] = Counter()
        self._sender: _Sender | None = None
        self._requests: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port), reuse_port=False)
        self._sender = _Sender(self)
        self._sender.start()

    def finished(self, x: _Transfer) -> None:
        """On the loop: a transfer ended (sent, failed, or stopped)."""
        t = x.transfer
        if t.failed or not t.done:
            self.counters["failed"] += 1
            log.info("event=tftp.failed peer=%s file=%s why=%s", x.peer[0], x.file, t.failed or "stopped")
        else:
            self.counters["sent"] += 1
            log.info("event=tftp.sent peer=%s file=%s bytes=%d", x.peer[0], x.file, len(t.data))
        self.active.discard(x)

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
            log.debug("event=tftp.malformed peer=%s why=%s", addr[0], e)
            return
        except PermissionError as e:
            self.transport.sendto(error(TftpError.ILLEGAL_OPERATION, str(e)), addr)
            return
        local = self.transport.get_extra_info("sockname")[0]
        try:
            payload = self.files.read(req.filename, addr[0], local)
        except FileNotFoundError as e:
            self.counters["not_found"] += 1
            self.transport.sendto(error(TftpError.FILE_NOT_FOUND, str(e)), addr)
            log.info("event=tftp.not_found peer=%s file=%s", addr[0], req.filename)
            return
        except (PermissionError, OSError) as e:
            self.counters["refused"] += 1
            self.transport.sendto(error(TftpError.ACCESS_VIOLATION, str(e) if isinstance(e, PermissionError)
                                        else "cannot read the file"), addr)
            log.info("event=tftp.refused peer=%s file=%s why=%s", addr[0], req.filename, e)
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
            log.warning("event=tftp.failed peer=%s file=%s why=%s", addr[0], req.filename, e)
            return
        assert self._sender is not None
        self.active.add(transfer)
        self._sender.add(transfer)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.stop()
        if self.transport is not None:
            self.transport.close()
