"""iSNSP messages ⇄ bytes, without sockets (RFC 4171 §5).

A PDU is a 12-byte header (version, function ID, PDU length, flags,
transaction ID, sequence ID: §5.1) and a payload of TLV attributes (§5.5),
each padded to 4 bytes. A message may span several PDUs (FIRST_PDU ...
LAST_PDU, sequence IDs counting up: §5.4); :class:`Reassembler` joins them.
A request's attributes are the source, the message key, a delimiter and the
operating attributes (§5.6.1); a response starts with a 4-byte status (§5.7).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .protocol import (HEADER_SIZE, KINDS, MAX_PDU_PAYLOAD, RESPONSE, UDP_PORT_FLAG, VERSION, Flags, Function, Kind,
                       Status, Tag)

HEADER = struct.Struct("!HHHHHH")
TLV = struct.Struct("!II")
MAX_ATTRIBUTE = MAX_PDU_PAYLOAD - TLV.size - 4  # one attribute must fit in one PDU with a status

Value = str | int | ipaddress.IPv6Address | bytes | None  # None: a zero-length ("NIL") attribute


class IsnsFormatError(ValueError):
    """Bytes that are not a well-formed iSNSP PDU or attribute."""


@dataclass(frozen=True)
class Port:
    """A TCP/UDP port attribute (§6.3.2)."""

    number: int
    udp: bool = False

    def __str__(self) -> str:
        return f"{self.number}/{'udp' if self.udp else 'tcp'}"


@dataclass(frozen=True)
class Attr:
    tag: int
    value: Value | Port = None

    def __str__(self) -> str:
        name = Tag(self.tag).name if self.tag in Tag._value2member_map_ else str(self.tag)
        return f"{name}={display(self.value)}"


def display(value: Value | Port) -> str:
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return str(value.ipv4_mapped)
    return "" if value is None else str(value)


def address(text: str) -> ipaddress.IPv6Address:
    """An IPv4 or IPv6 address as iSNS writes it: 16 bytes, IPv4 mapped (§6.3.1)."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip


@dataclass(frozen=True)
class Header:
    function: int
    length: int
    flags: int
    xid: int
    seq: int
    version: int = VERSION

    def pack(self) -> bytes:
        return HEADER.pack(self.version, self.function, self.length, self.flags, self.xid, self.seq)


def unpack_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise IsnsFormatError(f"a PDU header is {HEADER_SIZE} bytes, got {len(data)}")
    version, function, length, flags, xid, seq = HEADER.unpack_from(data)
    if length % 4:
        raise IsnsFormatError(f"PDU length {length} is not a multiple of 4")
    return Header(function, length, flags, xid, seq, version)


@dataclass(frozen=True)
class Message:
    """A whole iSNSP message: ``function`` carries RESPONSE for responses,
    whose ``status`` is set."""

    function: int
    xid: int
    attrs: tuple[Attr, ...] = ()
    flags: Flags = Flags(0)
    status: Status | int | None = None

    @property
    def is_response(self) -> bool:
        return bool(self.function & RESPONSE)

    @property
    def source(self) -> Attr | None:
        """The first attribute of a request: who asks (§5.6.1)."""
        return self.attrs[0] if self.attrs and not self.is_response else None

    def split(self) -> tuple[list[Attr], list[Attr]]:
        """(key attributes, operating attributes) around the delimiter; a
        request's source is left out of the keys."""
        attrs = list(self.attrs[1:] if not self.is_response else self.attrs)
        for i, a in enumerate(attrs):
            if a.tag == Tag.DELIMITER:
                return attrs[:i], attrs[i + 1:]
        return attrs, []


# -- attributes -------------------------------------------------------------------


def encode_value(tag: int, value: Value | Port) -> bytes:
    if value is None:
        return b""
    kind = KINDS.get(tag, Kind.OPAQUE)
    if kind is Kind.STRING:
        raw = str(value).encode() + b"\0"
        return raw + b"\0" * (-len(raw) % 4)
    if kind is Kind.UINT32:
        return struct.pack("!I", int(value))  # type: ignore[arg-type]
    if kind is Kind.UINT64:
        return struct.pack("!Q", int(value))  # type: ignore[arg-type]
    if kind is Kind.ADDRESS:
        ip = value if isinstance(value, ipaddress.IPv6Address) else address(str(value))
        return ip.packed
    if kind is Kind.PORT:
        port = value if isinstance(value, Port) else Port(int(value))  # type: ignore[arg-type]
        return struct.pack("!I", port.number | (UDP_PORT_FLAG if port.udp else 0))
    raw = bytes(value)  # type: ignore[arg-type]
    return raw + b"\0" * (-len(raw) % 4)


def decode_value(tag: int, raw: bytes) -> Value | Port:
    if not raw:
        return None
    kind = KINDS.get(tag, Kind.OPAQUE)
    try:
        if kind is Kind.STRING:
            text = raw.split(b"\0", 1)[0].decode()
            return text
        if kind in (Kind.UINT32, Kind.PORT):
            if len(raw) != 4:
                raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 4 are expected")
            (n,) = struct.unpack("!I", raw)
            return Port(n & 0xFFFF, bool(n & UDP_PORT_FLAG)) if kind is Kind.PORT else n
        if kind is Kind.UINT64:
            if len(raw) != 8:
                raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 8 are expected")
            return int(struct.unpack("!Q", raw)[0])
        if kind is Kind.ADDRESS:
            if len(raw) != 16:
                raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 16 are expected")
            if raw[:12] == bytes(12) and raw[12:] not in (bytes(4), b"\0\0\0\1"):
                # open-isns writes IPv4 "compatible" (::a.b.c.d); one form for both: mapped
                return address(str(ipaddress.IPv4Address(raw[12:])))
            return ipaddress.IPv6Address(raw)
    except UnicodeDecodeError:
        raise IsnsFormatError(f"attribute {tag}: not UTF-8") from None
    return raw


def encode_attrs(attrs: Iterable[Attr]) -> Iterator[bytes]:
    for a in attrs:
        value = encode_value(a.tag, a.value)
        if len(value) > MAX_ATTRIBUTE:
            raise IsnsFormatError(f"attribute {a.tag}: {len(value)} bytes do not fit in a PDU")
        yield TLV.pack(a.tag, len(value)) + value


def decode_attrs(data: bytes) -> tuple[Attr, ...]:
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < TLV.size:
            raise IsnsFormatError(f"{len(data) - pos} stray bytes after the last attribute")
        tag, length = TLV.unpack_from(data, pos)
        pos += TLV.size
        if length > len(data) - pos:
            raise IsnsFormatError(f"attribute {tag}: length {length} runs past the message")
        if length % 4:
            raise IsnsFormatError(f"attribute {tag}: length {length} is not a multiple of 4")
        out.append(Attr(tag, decode_value(tag, data[pos:pos + length])))
        pos += length
    return tuple(out)


# -- messages ------------------------------------------------------------------------


def decode_message(function: int, xid: int, flags: int, payload: bytes) -> Message:
    """A message from its (joined) payload."""
    status = None
    if function == Function.HEARTBEAT:  # a fixed layout, not attributes: see Heartbeat
        Heartbeat.unpack(payload)
        return Message(function, xid, (), Flags(flags & 0xFFFF))
    if function & RESPONSE:
        if len(payload) < 4:
            raise IsnsFormatError("a response starts with a 4-byte status")
        (code,) = struct.unpack_from("!I", payload)
        status = Status(code) if code in Status._value2member_map_ else code
        payload = payload[4:]
    return Message(function, xid, decode_attrs(payload), Flags(flags & 0xFFFF), status)


def encode_message(msg: Message, max_payload: int = MAX_PDU_PAYLOAD) -> list[bytes]:
    """The message as PDUs, each holding whole attributes (§5.4)."""
    head = b"" if msg.status is None else struct.pack("!I", int(msg.status))
    chunks: list[bytes] = []
    current = head
    for raw in encode_attrs(msg.attrs):
        if len(current) + len(raw) > max_payload and current:
            chunks.append(current)
            current = b""
        current += raw
    chunks.append(current)
    base = int(msg.flags) & ~(Flags.FIRST_PDU | Flags.LAST_PDU)
    # the server sends responses and its own SCN/ESI requests; clients answer those (§5.1.4)
    server_sent = msg.is_response != (msg.function & ~RESPONSE in (Function.SCN, Function.ESI))
    base |= Flags.SERVER if server_sent else Flags.CLIENT
    pdus = []
    for seq, chunk in enumerate(chunks):
        flags = base | (Flags.FIRST_PDU if seq == 0 else 0) | (Flags.LAST_PDU if seq == len(chunks) - 1 else 0)
        pdus.append(Header(msg.function, len(chunk), flags, msg.xid, seq).pack() + chunk)
    return pdus


@dataclass
class Reassembler:
    """Joins the PDUs of one connection into messages (§5.4): PDUs of a
    message share function and transaction ID and count sequence IDs up
    from 0; a message ends at the PDU flagged LAST_PDU."""

    max_message: int = 1 << 20  # bytes one message may gather
    _parts: dict[tuple[int, int], tuple[int, bytearray, int]] = field(default_factory=dict)

    def feed(self, header: Header, payload: bytes) -> Message | None:
        if header.version != VERSION:
            raise IsnsFormatError(f"iSNSP version {header.version} (this server speaks {VERSION})")
        key = (header.function, header.xid)
        if header.flags & Flags.FIRST_PDU or key not in self._parts:
            if header.seq != 0:
                raise IsnsFormatError(f"PDU {header.seq} of a message whose first PDU was not seen")
            self._parts[key] = (0, bytearray(), header.flags)
        seq, data, flags = self._parts[key]
        if header.seq != seq:
            del self._parts[key]
            raise IsnsFormatError(f"PDU sequence {header.seq} where {seq} was expected")
        data += payload
        if len(data) > self.max_message:
            del self._parts[key]
            raise IsnsFormatError(f"message longer than {self.max_message} bytes")
        if not header.flags & Flags.LAST_PDU:
            self._parts[key] = (seq + 1, data, flags)
            return None
        del self._parts[key]
        return decode_message(header.function, header.xid, flags, bytes(data))


def request(function: int, xid: int, source: Attr, keys: Iterable[Attr] = (), operating: Iterable[Attr] = (),
            flags: Flags = Flags(0)) -> Message:
    """A request: source, message key, delimiter, operating attributes (§5.6.1)."""
    return Message(function, xid, (source, *keys, Attr(Tag.DELIMITER), *operating), flags)


def response(req: Message, status: Status, attrs: Iterable[Attr] = ()) -> Message:
    return Message(req.function | RESPONSE, req.xid, tuple(attrs), Flags(0), status)


@dataclass(frozen=True)
class Heartbeat:
    """The server's announcement of itself (§5.6.5.14): where to reach it,
    how often it speaks, and a counter; sent by UDP, with no response."""

    address: ipaddress.IPv6Address
    tcp_port: int
    udp_port: int
    interval: int
    counter: int

    LAYOUT = struct.Struct("!16sHHII")

    def pack(self, xid: int = 0) -> bytes:
        payload = self.LAYOUT.pack(self.address.packed, self.udp_port, self.tcp_port, self.interval, self.counter)
        flags = Flags.SERVER | Flags.FIRST_PDU | Flags.LAST_PDU
        return Header(Function.HEARTBEAT, len(payload), flags, xid, 0).pack() + payload

    @classmethod
    def unpack(cls, payload: bytes) -> Heartbeat:
        if len(payload) < cls.LAYOUT.size:
            raise IsnsFormatError(f"a heartbeat is {cls.LAYOUT.size} bytes, got {len(payload)}")
        raw, udp, tcp, interval, counter = cls.LAYOUT.unpack_from(payload)
        return cls(ipaddress.IPv6Address(raw), tcp, udp, interval, counter)
