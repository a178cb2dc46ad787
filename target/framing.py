"""PDU framing on a byte stream (RFC 7143 §11.2): BHS, AHS, header digest,
data segment padded to 4 bytes, data digest. Sans-I/O: :class:`PduReader`
takes bytes and gives PDUs; :func:`frame` gives the bytes of one PDU.

Digests are CRC32C (§13.1, RFC 3385) from the ``crc32c`` package, whose
hardware path is far faster than anything written here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from .pdu import BHS_LEN, Pdu, PduFormatError, RejectReason, decode

# A data segment is at most 2**24-1 bytes by its field width; anything larger
# than what we told the initiator it may send is refused (§13.12).
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
# Data segments from this size on are received straight into a buffer of
# their own (``recv_into``, §13.12 allows up to 16 MiB): the stream buffer
# neither grows to hold them nor is copied out of.
DIRECT_MIN = 64 << 10


def crc32c_digest(*parts: bytes | memoryview) -> bytes:
    """The 4-byte digest of the parts, little-endian as §13.1 sends it."""
    crc = 0
    for p in parts:
        crc = crc32c.crc32c(p, crc)
    return struct.pack("<I", crc)


def padding(length: int) -> bytes:
    return _PAD[length % 4]


class DigestError(Exception):
    """A digest did not match; ``header`` tells which one (§7.8).
    ``skipped``: the PDU's bytes, as far as its header said, were consumed
    (the stream is in step if the header's length was right); False when
    the reader stopped at the bad header."""

    def __init__(self, message: str, header: bool, bhs: bytes, skipped: bool = True) -> None:
        super().__init__(message)
        self.header = header
        self.bhs = bhs
        self.skipped = skipped


class OversizedPdu(PduFormatError):
    """A data segment larger than the negotiated MaxRecvDataSegmentLength.
    The PDU's bytes have been consumed; ``bhs`` is its header."""

    def __init__(self, message: str, bhs: bytes) -> None:
        super().__init__(message, RejectReason.PROTOCOL_ERROR, bhs)


@dataclass
class DigestSettings:
    header: bool = False
    data: bool = False


class PduReader:
    """Splits a byte stream into PDUs.

    ``feed(data)`` then iterate ``pdus()``. ``max_data`` is the data segment
    limit we declared (MaxRecvDataSegmentLength); a larger segment raises
    :class:`OversizedPdu` as soon as its header is in, and its bytes are
    dropped as they arrive (never buffered: 16 such PDUs of 16 MiB once cost
    264 MB), so the stream stays in sync. Segments beyond ``hard_limit``
    cannot be skipped safely (the sender is not speaking iSCSI) and raise
    :class:`PduFormatError`.

    A data segment of :data:`DIRECT_MIN` bytes or more is not gathered in
    the stream buffer: once its header is in, :meth:`receive_buffer` names
    the buffer of its own (segment, padding and digest) that the transport
    receives into (then :meth:`received`); the PDU carries a view of it.
    One large segment at a time, never more than ``max_data``.

    ``completed`` counts the PDUs taken off the stream (returned or refused)
    and :attr:`partial` says whether one has begun and not ended, so the
    transport can put a deadline on a PDU without this class keeping time.
    """

    def __init__(self, max_data: int = 8192, hard_limit: int = 1 << 24) -> None:
        self.buf = bytearray()
        self.pos = 0  # start of the unread bytes in buf; compacted on feed
        self.digests = DigestSettings()
        self.max_data = max_data
        self.hard_limit = hard_limit
        self.skip = 0  # bytes of an oversized PDU still to come, dropped as they arrive
        self.completed = 0
        self.direct: _Direct | None = None  # the large data segment arriving, if any
        self.after_direct = False  # the last PDU had a large segment: another is likely next

    def receive_buffer(self) -> memoryview | None:
        """Where the transport should receive next: the unfilled part of a
        large data segment's own buffer, or None (then :meth:`feed`)."""
        d = self.direct
        if d is None or d.filled == len(d.buf):
            return None
        return memoryview(d.buf)[d.filled:]

    def read_size(self, most: int) -> int:
        """How much the transport should read into :meth:`feed` next:
        ``most``, but only a header right after a large segment, since the
        next PDU is likely large too (Data-Out of a long write) and its
        segment should go to its own buffer, not through the stream buffer."""
        if self.after_direct and len(self.buf) == self.pos:
            return BHS_LEN + (4 if self.digests.header else 0)
        return most

    def received(self, n: int) -> None:
        """``n`` bytes were received into :meth:`receive_buffer`."""
        assert self.direct is not None
        self.direct.filled += n

    def feed(self, data: bytes | memoryview) -> None:
        d = self.direct
        if d is not None and d.filled < len(d.buf):
            n = min(len(data), len(d.buf) - d.filled)
            d.buf[d.filled:d.filled + n] = data[:n]
            d.filled += n
            data = data[n:]
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
        if self.pos:
            # drop consumed bytes once per feed, not once per PDU: a read of
            # many small PDUs would otherwise move the buffer again and again
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned PDU."""
        return len(self.buf) - self.pos + (self.direct.filled if self.direct is not None else 0)

    @property
    def partial(self) -> bool:
        """Part of a PDU is in (or, for one refused, still to come)."""
        return bool(self.skip) or len(self.buf) > self.pos or self.direct is not None

    def pdus(self) -> Iterator[Pdu]:
        """Every complete PDU in the buffer; errors are raised in stream order
        after the offending bytes are consumed."""
        while True:
            pdu = self.next_pdu()
            if pdu is None:
                return
            yield pdu

    def next_pdu(self) -> Pdu | None:
        if self.direct is not None:
            return self._direct_pdu()
        buf = self.buf
        pos = self.pos
        if len(buf) - pos < BHS_LEN:
            return None
        ahs_len = buf[pos + 4] * 4
        data_len = int.from_bytes(buf[pos + 5:pos + 8], "big")
        hd = 4 if self.digests.header else 0
        dd = 4 if self.digests.data and data_len else 0
        padded = data_len + (-data_len % 4)
        total = BHS_LEN + ahs_len + hd + padded + dd
        if data_len > self.hard_limit:
            raise PduFormatError(f"data segment of {data_len} bytes: not an iSCSI stream here")
        if data_len > self.max_data:
            return self._oversized(data_len, total, ahs_len, hd)
        if len(buf) - pos < total:
            if data_len >= DIRECT_MIN:
                self._go_direct(ahs_len, hd, data_len, padded + dd)
            return None
        self.pos = pos + total
        self.completed += 1
        self.after_direct = False
        end_bhs = pos + BHS_LEN
        bhs = bytes(buf[pos:end_bhs])
        ahs = bytes(buf[end_bhs:end_bhs + ahs_len]) if ahs_len else b""
        if hd:
            got = bytes(buf[end_bhs + ahs_len:end_bhs + ahs_len + 4])
            if crc32c_digest(bhs, ahs) != got:
                raise DigestError("header digest mismatch", header=True, bhs=bhs)
        start = end_bhs + ahs_len + hd
        data = bytes(buf[start:start + data_len]) if data_len else b""
        if dd:
            got = bytes(buf[start + padded:start + padded + 4])
            if crc32c_digest(data, padding(data_len)) != got:
                raise DigestError("data digest mismatch", header=False, bhs=bhs)
        try:
            return decode(bhs, ahs, data)
        except PduFormatError as e:
            e.bhs = bhs  # consumed: the stream stays in step, the PDU can be rejected
            raise


    def _go_direct(self, ahs_len: int, hd: int, data_len: int, size: int) -> None:
        """A large segment's header is in: what follows goes to a buffer of
        its own, starting with what the stream buffer already holds of it."""
        pos = self.pos
        head = BHS_LEN + ahs_len + hd
        if len(self.buf) - pos < head:
            return
        bhs = bytes(self.buf[pos:pos + BHS_LEN])
        ahs = bytes(self.buf[pos + BHS_LEN:pos + BHS_LEN + ahs_len])
        if hd and crc32c_digest(bhs, ahs) != bytes(self.buf[pos + head - hd:pos + head]):
            # the segment the header announced is dropped as it arrives
            have = min(size, len(self.buf) - pos - head)
            self.pos = pos + head + have
            self.skip = size - have
            self.completed += 1
            raise DigestError("header digest mismatch", header=True, bhs=bhs)
        d = self.direct = _Direct(bhs, ahs, data_len, bytearray(size))
        d.filled = len(self.buf) - pos - head
        d.buf[:d.filled] = memoryview(self.buf)[pos + head:]
        self.pos = len(self.buf)

    def _direct_pdu(self) -> Pdu | None:
        d = self.direct
        assert d is not None
        if d.filled < len(d.buf):
            return None
        self.direct = None
        self.completed += 1
        self.after_direct = True
        data = memoryview(d.buf)[:d.data_len]
        padded = d.data_len + (-d.data_len % 4)
        if len(d.buf) > padded and crc32c_digest(data, padding(d.data_len)) != bytes(d.buf[padded:]):
            raise DigestError("data digest mismatch", header=False, bhs=d.bhs)
        try:
            return decode(d.bhs, d.ahs, d.buf if len(d.buf) == d.data_len else data)
        except PduFormatError as e:
            e.bhs = d.bhs
            raise

    def _oversized(self, data_len: int, total: int, ahs_len: int, hd: int) -> None:
        """A segment over the declared limit: refused from its header (once
        the header and its digest are in), the rest dropped, not kept."""
        pos = self.pos
        head = BHS_LEN + ahs_len + hd
        if len(self.buf) - pos < head:
            return None
        bhs = bytes(self.buf[pos:pos + BHS_LEN])
        if hd and crc32c_digest(bhs, bytes(self.buf[pos + BHS_LEN:pos + BHS_LEN + ahs_len])) != \
                bytes(self.buf[pos + head - hd:pos + head]):
            raise DigestError("header digest mismatch", header=True, bhs=bhs, skipped=False)
        have = min(total, len(self.buf) - pos)
        self.pos = pos + have
        self.completed += 1
        self.skip = total - have
        raise OversizedPdu(f"data segment of {data_len} bytes exceeds {self.max_data}", bhs)


@dataclass(eq=False)
class _Direct:
    """A large data segment being received into its own buffer: the
    segment, its padding and its data digest, ``filled`` bytes so far."""

    bhs: bytes
    ahs: bytes
    data_len: int
    buf: bytearray
    filled: int = 0


def frame(pdu: Pdu, digests: DigestSettings, data_length: int | None = None) -> list[bytes | memoryview]:
    """The pieces to send for ``pdu``: header (+digest), data, pad (+digest).

    With ``data_length`` the data segment is sent by the caller after the
    header piece (zero-copy); then only the header is returned, and digests
    must be off (a data digest needs the bytes)."""
    header = pdu.encode_bhs(data_length)
    if pdu.ahs:
        header += pdu.ahs
    if digests.header:
        header += crc32c_digest(header)
    if data_length is not None:
        return [header]
    data = pdu.data
    if not data:
        return [header]
    pieces: list[bytes | memoryview] = [header, data]
    pad = padding(len(data))
    if pad:
        pieces.append(pad)
    if digests.data:
        pieces.append(crc32c_digest(data, pad))
    return pieces
