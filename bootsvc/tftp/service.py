"""TFTP on asyncio UDP sockets: requests on the server port, each transfer
on its own socket and port (its TID, RFC 1350 §4), many at once."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

from .files import FileSource
from .transfer import ReadTransfer, TftpError, TftpFormatError, decode, error, parse_request

log = logging.getLogger("bootsvc.tftp")
TIMEOUT = 1.0


class _Transfer(asyncio.DatagramProtocol):
    def __init__(self, service: TftpService, transfer: ReadTransfer, peer: tuple[str, int], name: str) -> None:
        self.service = service
        self.transfer = transfer
        self.peer = peer
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send(self.transfer.start())

    def _send(self, packets: list[bytes]) -> None:
        assert self.transport is not None
        for p in packets:
            self.transport.sendto(p, self.peer)
        if self.timer is not None:
            self.timer.cancel()
        if self.transfer.done:
            self._finish()
        else:
            self.timer = asyncio.get_running_loop().call_later(TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        self._send(self.transfer.on_timeout())

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.peer[:2]:
            assert self.transport is not None
            self.transport.sendto(error(TftpError.UNKNOWN_TID, "unknown transfer ID"), addr)
            return
        try:
            pkt = decode(data)
        except TftpFormatError:
            self.service.counters["dropped_malformed"] += 1
            return
        packets = self.transfer.on_packet(pkt)
        if packets or self.transfer.done:
            self._send(packets)

    def _finish(self) -> None:
        t = self.transfer
        if t.failed:
            self.service.counters["failed"] += 1
            log.info("event=tftp.failed peer=%s file=%s why=%s", self.peer[0], self.name, t.failed)
        else:
            self.service.counters["sent"] += 1
            log.info("event=tftp.sent peer=%s file=%s bytes=%d", self.peer[0], self.name, len(t.data))
        if self.transport is not None:
            self.transport.close()
        self.service.active.discard(self)


class TftpService(asyncio.DatagramProtocol):
    def __init__(self, files: FileSource, host: str = "0.0.0.0", port: int = 69) -> None:
        self.files = files
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.active: set[_Transfer] = set()
        self.counters: Counter[str] = Counter()
        self._requests: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port), reuse_port=False)

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
        try:
            payload = self.files.read(req.filename, addr[0], self.transport.get_extra_info("sockname")[0])
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
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        local = self.transport.get_extra_info("sockname")[0]
        transfer = _Transfer(self, ReadTransfer(req, payload), addr, req.filename)
        self.active.add(transfer)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: transfer, local_addr=(local, 0), family=family)

    def close(self) -> None:
        for t in list(self.active):
            if t.transport is not None:
                t.transport.close()
        if self.transport is not None:
            self.transport.close()
