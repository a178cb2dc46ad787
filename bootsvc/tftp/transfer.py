"""One read transfer (RRQ) as a state machine without sockets or clocks:
packets in, packets out, timeouts told by the caller (RFC 1350 §2, RFC 2347
option negotiation, RFC 7440 windows). The one wait inside: a large file
may still be coming into memory (files.Filling), and a block waits for its
bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import (
    TftpPacket,
    TftpPacketACK,
    TftpPacketERR,
    TftpPacketOACK,
    TftpPacketRRQ,
    TftpPacketWRQ,
)
from tftpy.TftpShared import TftpException

from .files import Filling

DEFAULT_BLKSIZE = 512
MAX_BLKSIZE = 65464  # RFC 2348
MAX_WINDOW = 64
RETRIES = 5
DATA_HEADER = struct.Struct("!HH")  # opcode 3, block number (RFC 1350 §5)
ACK = struct.Struct("!HH")  # opcode 4, block number: what a client sends back


class TftpError(IntEnum):
    """RFC 1350 error codes (and 8, RFC 2347 option refusal)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    OPTION_REFUSED = 8


class TftpFormatError(ValueError):
    """A packet that is not TFTP."""


_factory = TftpPacketFactory()


def decode(data: bytes) -> TftpPacket:
    try:
        return _factory.parse(data)
    except (TftpException, struct.error, ValueError, UnicodeDecodeError, IndexError, KeyError) as e:
        raise TftpFormatError(str(e) or "malformed packet") from None


def error(code: TftpError, message: str) -> bytes:
    pkt = TftpPacketERR()
    pkt.errorcode = int(code)
    pkt.errmsg = message.encode()
    return bytes(pkt.encode().buffer)


@dataclass
class Request:
    filename: str
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    wants_tsize: bool = False
    accepted: dict[str, str] = field(default_factory=dict)  # options to acknowledge in an OACK


def parse_request(pkt: TftpPacket) -> Request:
    """An RRQ with its options, or TftpFormatError; a write request is refused
    by the caller (read-only server)."""
    if isinstance(pkt, TftpPacketWRQ):
        raise PermissionError("this TFTP server is read-only")
    if not isinstance(pkt, TftpPacketRRQ):
        raise TftpFormatError(f"{type(pkt).__name__} is not a request")
    if str(pkt.mode).lower() not in ("octet", "netascii"):
        raise TftpFormatError(f"transfer mode {pkt.mode!r} is not supported")
    req = Request(str(pkt.filename))
    for name, value in (pkt.options or {}).items():
        key = str(name).lower()
        try:
            number = int(value)
        except (TypeError, ValueError):
            continue  # an option we cannot read is an option we ignore (RFC 2347)
        if key == "blksize" and number >= 8:
            req.blksize = min(number, MAX_BLKSIZE)
            req.accepted["blksize"] = str(req.blksize)
        elif key == "windowsize" and number >= 1:
            req.windowsize = min(number, MAX_WINDOW)
            req.accepted["windowsize"] = str(req.windowsize)
        elif key == "tsize":
            req.wants_tsize = True
    return req


class ReadTransfer:
    """Sends ``data`` to one client: OACK (when options were accepted) then
    DATA blocks in windows, advancing on ACKs, resending on timeouts."""

    def __init__(self, req: Request, data: bytes | memoryview | Filling) -> None:
        self.req = req
        # a large file still being read (files.Filling): _block waits for the bytes it sends
        self.filling = data if isinstance(data, Filling) else None
        self.data = data.buffer if isinstance(data, Filling) else memoryview(data)
        self.blksize = req.blksize
        self.lockstep = req.windowsize == 1  # one block per ACK: the common case, taken first
        self.blocks = len(self.data) // req.blksize + 1  # the last block is short (maybe empty)
        self.acked = 0  # highest block the client acknowledged
        self.retries = 0
        self.done = False
        self.failed = ""
        if req.wants_tsize:
            req.accepted["tsize"] = str(len(self.data))
        self.oack = bool(req.accepted)
        # The lock-step hot path (prepare / on_expected_ack): while the client
        # is busy with the block in flight, ``expect`` is its ACK byte for byte
        # and ``upcoming`` the DATA packet that ACK releases (None: it ends the
        # transfer), so the adapter answers an ACK with one comparison and one
        # send, no packet building in between. None when not prepared (before
        # the first block, with windows, after any other state change): every
        # datagram then takes on_ack / on_packet.
        self.expect: bytes | None = None
        self.upcoming: bytes | None = None

    def _block(self, n: int) -> bytes:
        start = (n - 1) * self.blksize
        if self.filling is not None and start + self.blksize > self.filling.filled:
            self.filling.ensure(start + self.blksize)  # files.ReadError if the file cannot be read on
        return DATA_HEADER.pack(3, n & 0xFFFF) + self.data[start:start + self.blksize]  # one copy

    def _window(self) -> list[bytes]:
        last = min(self.acked + self.req.windowsize, self.blocks)
        return [self._block(n) for n in range(self.acked + 1, last + 1)]

    def start(self) -> list[bytes]:
        if self.oack:
            pkt = TftpPacketOACK()
            pkt.options = dict(self.req.accepted)
            return [bytes(pkt.encode().buffer)]
        return self._window()

    def on_packet(self, pkt: TftpPacket) -> list[bytes]:
        if isinstance(pkt, TftpPacketERR):
            self.done, self.failed = True, f"client error {pkt.errorcode}: {pkt.errmsg!r}"
            return []
        if not isinstance(pkt, TftpPacketACK):
            return [error(TftpError.ILLEGAL_OPERATION, "expected an ACK")]
        return self.on_ack(pkt.blocknumber)

    def on_ack(self, blocknumber: int) -> list[bytes]:
        """An ACK of ``blocknumber`` (16 bits on the wire)."""
        self.expect = None  # any move below outdates the prepared block; prepare() again after sending
        if self.lockstep and not self.oack and blocknumber == (self.acked + 1) & 0xFFFF:
            # the common case first: the ACK of the one block just sent
            n = self.acked = self.acked + 1
            self.retries = 0
            if n >= self.blocks:
                self.done = True
                return []
            return [self._block(n + 1)]
        if self.oack:  # the ACK of our OACK is block 0; data starts after it
            if blocknumber != 0:
                return []
            self.oack = False
            self.retries = 0
            return self._window()
        # block numbers wrap at 65536 (RFC 1350 leaves it open; iPXE and tftp-hpa roll over)
        sent_upto = min(self.acked + self.req.windowsize, self.blocks)
        n = (self.acked & ~0xFFFF) | blocknumber
        if n < self.acked - 0x8000:
            n += 0x10000
        if n <= self.acked or n > sent_upto:
            return []  # a duplicate or stray ACK: no resend (Sorcerer's Apprentice, RFC 1123 §4.2.3.1)
        self.acked = n
        self.retries = 0
        if self.acked >= self.blocks:
            self.done = True
            return []
        return self._window()

    def on_timeout(self) -> list[bytes]:
        self.retries += 1
        if self.retries > RETRIES:
            self.done, self.failed = True, f"no ACK after {RETRIES} retries"
            self.expect = None
            return []
        return self.start() if self.oack else self._window()

    def prepare(self) -> None:
        """Called by the adapter after sending: in lock-step, build the block
        the next ACK will release now, while the client is still receiving
        and writing the one in flight (tftpd-hpa reads ahead the same way).
        Lock-step TFTP is bound by the round trip, and this keeps the packet
        building (header, slice, copy) out of the time between an ACK coming
        in and the next DATA going out."""
        if not self.lockstep or self.oack or self.done:
            self.expect = None
            return
        n = self.acked + 1  # the block in flight
        if self.expect is not None:
            return  # still prepared (a timeout resent the block in flight)
        self.upcoming = self._block(n + 1) if n < self.blocks else None
        self.expect = ACK.pack(4, n & 0xFFFF)

    def on_expected_ack(self) -> bytes | None:
        """The datagram was ``expect`` byte for byte: the ACK of the block in
        flight. Returns the next block to send, already built (None: that was
        the last block, the transfer is done); prepare() again after sending
        it. The same outcome as on_ack's lock-step branch, without its work."""
        self.acked += 1
        self.retries = 0
        self.expect = None
        packet = self.upcoming
        if packet is None:
            self.done = True
        return packet
