"""One read transfer (RRQ) as a state machine without sockets or clocks:
datagrams in, datagrams out, and time as a parameter (``now``, seconds on
the caller's monotonic clock): ``next_timer()`` says when the transfer wants
``handle_timer(now)`` to resend or give up (RFC 1350 §2 and §4, the timeout
option of RFC 2349), so a test drives a whole transfer with a fake clock
(RFC 2347 option negotiation, RFC 7440 windows). The one wait inside: a
large file may still be coming into memory (files.Filling), and a block
waits for its bytes."""

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
TIMEOUT = 1.0  # seconds without an ACK before a window is sent again, unless the client asks (RFC 2349)
MAX_TIMEOUT = 255  # RFC 2349 §2: 1 to 255 seconds
ACK_OPCODE = 4
DATA_HEADER = struct.Struct("!HH")  # opcode 3, block number (RFC 1350 §5)
ACK = struct.Struct("!HH")  # opcode 4, block number: what a client sends back
ERROR_HEADER = struct.Struct("!HH")  # opcode 5, error code (RFC 1350 §5)


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
    """An ERROR with our own message (RFC 1350 §5: opcode 5, code, a
    netascii string ending in a zero byte). Not tftpy's TftpPacketERR,
    whose encode sends its own text for the code and has none for code 0."""
    text = message.replace("\0", " ").encode("ascii", "replace")
    return ERROR_HEADER.pack(5, int(code)) + text + b"\0"


@dataclass
class Request:
    filename: str
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = TIMEOUT
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
        elif key == "timeout" and 1 <= number <= MAX_TIMEOUT:
            req.timeout = number
            req.accepted["timeout"] = str(number)
        elif key == "tsize":
            req.wants_tsize = True
    return req


class ReadTransfer:
    """Sends ``data`` to one client: OACK (when options were accepted) then
    DATA blocks in windows, advancing on ACKs, resending the window when no
    ACK came by the deadline."""

    def __init__(self, req: Request, data: bytes | memoryview | Filling) -> None:
        self.req = req
        # a large file still being read (files.Filling): _block waits for the bytes it sends
        self.filling = data if isinstance(data, Filling) else None
        self.data = data.buffer if isinstance(data, Filling) else memoryview(data)
        self.blksize = req.blksize
        self.timeout = req.timeout
        self.lockstep = req.windowsize == 1  # one block per ACK: the common case, taken first
        self.blocks = len(self.data) // req.blksize + 1  # the last block is short (maybe empty)
        self.acked = 0  # highest block the client acknowledged
        self.window = req.windowsize  # blocks sent per window: halved at each timeout
        self.sent_upto = 0  # highest block sent
        self.retries = 0
        self.deadline = 0.0  # when the window in flight is sent again (handle_timer)
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
        # datagram then takes on_datagram.
        self.expect: bytes | None = None
        self.upcoming: bytes | None = None

    def _block(self, n: int) -> bytes:
        start = (n - 1) * self.blksize
        if self.filling is not None and start + self.blksize > self.filling.filled:
            self.filling.ensure(start + self.blksize)  # files.ReadError if the file cannot be read on
        return DATA_HEADER.pack(3, n & 0xFFFF) + self.data[start:start + self.blksize]  # one copy

    def _window(self, now: float) -> list[bytes]:
        """The blocks after the last one acknowledged, a window's worth
        (RFC 7440 §4), due again at ``now`` + timeout."""
        self.deadline = now + self.timeout
        last = min(self.acked + self.window, self.blocks)
        self.sent_upto = max(self.sent_upto, last)
        return [self._block(n) for n in range(self.acked + 1, last + 1)]

    def start(self, now: float) -> list[bytes]:
        """The first answer to the request: the OACK of the accepted options
        (RFC 2347), or else the first window."""
        if not self.oack:
            return self._window(now)
        self.deadline = now + self.timeout
        pkt = TftpPacketOACK()
        pkt.options = dict(self.req.accepted)
        return [bytes(pkt.encode().buffer)]

    def fail(self, why: str) -> None:
        """End the transfer unsent; ``why`` says what went wrong."""
        self.done, self.failed = True, why
        self.expect = None

    def next_timer(self) -> float | None:
        """When handle_timer wants to be called (None: the transfer is over)."""
        return None if self.done else self.deadline

    def handle_timer(self, now: float) -> list[bytes]:
        """Past the deadline without an ACK: the window (or OACK) again, and
        after RETRIES of them the transfer gives up (RFC 1350 §2: the sender
        of a lost packet times out and retransmits). Before the deadline,
        nothing."""
        if self.done or now < self.deadline:
            return []
        self.retries += 1
        if self.retries > RETRIES:
            self.fail(f"no ACK after {RETRIES} retries")
            return []
        if not self.oack:
            # a window that drew no ACK is sent again smaller: a client that
            # never reads on costs the server halving windows, not its full
            # window at every retry (25 MB for 64 KiB x 64 before)
            self.window = max(1, self.window // 2)
        return self.start(now)

    def on_datagram(self, data: bytes, now: float) -> list[bytes]:
        """What the client sent to this transfer's port; TftpFormatError
        when it is not TFTP."""
        if len(data) == 4 and data[1] == ACK_OPCODE and data[0] == 0:
            return self.on_ack(data[2] << 8 | data[3], now)  # ACKs, the usual datagram: no packet object
        return self.on_packet(decode(data), now)

    def on_packet(self, pkt: TftpPacket, now: float) -> list[bytes]:
        if isinstance(pkt, TftpPacketERR):
            self.fail(f"client error {pkt.errorcode}: {pkt.errmsg!r}")
            return []
        if not isinstance(pkt, TftpPacketACK):
            return [error(TftpError.ILLEGAL_OPERATION, "expected an ACK")]
        return self.on_ack(pkt.blocknumber, now)

    def on_ack(self, blocknumber: int, now: float) -> list[bytes]:
        """An ACK of ``blocknumber`` (16 bits on the wire)."""
        self.expect = None  # any move below outdates the prepared block; prepare() again after sending
        if self.lockstep and not self.oack and blocknumber == (self.acked + 1) & 0xFFFF:
            # the common case first: the ACK of the one block just sent
            n = self.acked = self.acked + 1
            self.retries = 0
            if n >= self.blocks:
                self.done = True
                return []
            self.deadline = now + self.timeout
            return [self._block(n + 1)]
        if self.oack:  # the ACK of our OACK is block 0; data starts after it
            if blocknumber != 0:
                return []
            self.oack = False
            self.retries = 0
            return self._window(now)
        # block numbers wrap at 65536 (RFC 1350 leaves it open; iPXE and tftp-hpa roll over)
        n = (self.acked & ~0xFFFF) | blocknumber
        if n < self.acked - 0x8000:
            n += 0x10000
        if n <= self.acked or n > self.sent_upto:
            return []  # a duplicate or stray ACK: no resend (Sorcerer's Apprentice, RFC 1123 §4.2.3.1)
        self.acked = n
        self.retries = 0
        if self.acked >= self.blocks:
            self.done = True
            return []
        return self._window(now)

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
        self.expect = ACK.pack(ACK_OPCODE, n & 0xFFFF)

    def on_expected_ack(self, now: float) -> bytes | None:
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
        else:
            self.deadline = now + self.timeout
        return packet
