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
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

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
    # its TLV bytes once encoded (_tlv): an Attr never changes, so neither do they; a class
    # default, not a field (not compared, shown or passed in), set on the instance when known
    _encoded: ClassVar[bytes | None] = None

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
        attrs = self.attrs
        first = 0 if self.function & RESPONSE else 1
        for i in range(first, len(attrs)):
            if attrs[i].tag == Tag.DELIMITER:
                return list(attrs[first:i]), list(attrs[i + 1:])
        return list(attrs[first:]), []


# -- attributes -------------------------------------------------------------------
#
# Every request decodes about a dozen attributes and every response encodes one
# or two dozen, so both go through per-tag tables built once from KINDS rather
# than looking the kind up and testing it attribute by attribute.

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
# flag values as ints: IntFlag arithmetic runs in Python (~1 µs an operator)
_FIRST, _LAST, _SERVER, _CLIENT = int(Flags.FIRST_PDU), int(Flags.LAST_PDU), int(Flags.SERVER), int(Flags.CLIENT)
_FIRST_LAST = _FIRST | _LAST
_SERVER_REQUESTS = frozenset({int(Function.SCN), int(Function.ESI)})  # the requests a server sends
_NO_FLAGS = Flags(0)


def _pad(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def _encode_string(value: Value | Port) -> bytes:
    return _pad(str(value).encode() + b"\0")


def _encode_uint32(value: Value | Port) -> bytes:
    return _U32.pack(int(value))  # type: ignore[arg-type]


def _encode_uint64(value: Value | Port) -> bytes:
    return _U64.pack(int(value))  # type: ignore[arg-type]


def _encode_address(value: Value | Port) -> bytes:
    ip = value if isinstance(value, ipaddress.IPv6Address) else address(str(value))
    return ip.packed


def _encode_port(value: Value | Port) -> bytes:
    port = value if isinstance(value, Port) else Port(int(value))  # type: ignore[arg-type]
    return _U32.pack(port.number | (UDP_PORT_FLAG if port.udp else 0))


def _encode_opaque(value: Value | Port) -> bytes:
    return _pad(bytes(value))  # type: ignore[arg-type]


def _decode_string(tag: int, raw: bytes) -> Value | Port:
    return raw.split(b"\0", 1)[0].decode()


def _decode_uint32(tag: int, raw: bytes) -> Value | Port:
    if len(raw) != 4:
        raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 4 are expected")
    return int(_U32.unpack(raw)[0])


def _decode_port(tag: int, raw: bytes) -> Value | Port:
    if len(raw) != 4:
        raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 4 are expected")
    (n,) = _U32.unpack(raw)
    return Port(n & 0xFFFF, bool(n & UDP_PORT_FLAG))


def _decode_uint64(tag: int, raw: bytes) -> Value | Port:
    if len(raw) != 8:
        raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 8 are expected")
    return int(_U64.unpack(raw)[0])


def _decode_address(tag: int, raw: bytes) -> Value | Port:
    if len(raw) != 16:
        raise IsnsFormatError(f"attribute {tag}: {len(raw)} bytes where 16 are expected")
    if raw[:12] == bytes(12) and raw[12:] not in (bytes(4), b"\0\0\0\1"):
        # open-isns writes IPv4 "compatible" (::a.b.c.d); one form for both: mapped (as address())
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + raw[12:])
    return ipaddress.IPv6Address(raw)


def _decode_opaque(tag: int, raw: bytes) -> Value | Port:
    return raw


_ENCODE: dict[int, Callable[[Value | Port], bytes]] = {
    tag: {Kind.STRING: _encode_string, Kind.UINT32: _encode_uint32, Kind.UINT64: _encode_uint64,
          Kind.ADDRESS: _encode_address, Kind.PORT: _encode_port, Kind.OPAQUE: _encode_opaque}[kind]
    for tag, kind in KINDS.items()}
_DECODE: dict[int, Callable[[int, bytes], Value | Port]] = {
    tag: {Kind.STRING: _decode_string, Kind.UINT32: _decode_uint32, Kind.UINT64: _decode_uint64,
          Kind.ADDRESS: _decode_address, Kind.PORT: _decode_port, Kind.OPAQUE: _decode_opaque}[kind]
    for tag, kind in KINDS.items()}
# zero-length attributes (a query's operating attributes, the delimiter) are
# the same immutable Attr in every message: made once per known tag
_NIL: dict[int, Attr] = {int(tag): Attr(int(tag)) for tag in (Tag.DELIMITER, *KINDS)}


def encode_value(tag: int, value: Value | Port) -> bytes:
    if value is None:
        return b""
    return _ENCODE.get(tag, _encode_opaque)(value)


def decode_value(tag: int, raw: bytes) -> Value | Port:
    if not raw:
        return None
    try:
        return _DECODE.get(tag, _decode_opaque)(tag, raw)
    except UnicodeDecodeError:
        raise IsnsFormatError(f"attribute {tag}: not UTF-8") from None


def _tlv(a: Attr) -> bytes:
    """The attribute as TLV bytes, kept on the Attr after the first time (as
    functools.cached_property would, without its per-instance lock in Python
    3.11 or an instance __dict__): the registry's objects hand the same Attrs
    to every response (isns/objects.py), so most of a response is encoded
    once, not once per query."""
    raw = a._encoded
    if raw is None:
        value = b"" if a.value is None else _ENCODE.get(a.tag, _encode_opaque)(a.value)  # encode_value
        if len(value) > MAX_ATTRIBUTE:
            raise IsnsFormatError(f"attribute {a.tag}: {len(value)} bytes do not fit in a PDU")
        raw = TLV.pack(a.tag, len(value)) + value
        object.__setattr__(a, "_encoded", raw)  # frozen against changes of value, not this memo
    return raw


def encode_attrs(attrs: Iterable[Attr]) -> Iterator[bytes]:
    for a in attrs:
        yield _tlv(a)


def decode_attrs(data: bytes) -> tuple[Attr, ...]:
    out: list[Attr] = []
    append = out.append
    pos, end, size = 0, len(data), TLV.size
    unpack, decoders, nil = TLV.unpack_from, _DECODE, _NIL
    tag = 0
    try:
        while pos < end:
            if end - pos < size:
                raise IsnsFormatError(f"{end - pos} stray bytes after the last attribute")
            tag, length = unpack(data, pos)
            pos += size
            if not length:
                append(nil.get(tag) or Attr(tag))
                continue
            if length > end - pos:
                raise IsnsFormatError(f"attribute {tag}: length {length} runs past the message")
            if length % 4:
                raise IsnsFormatError(f"attribute {tag}: length {length} is not a multiple of 4")
            append(Attr(tag, decoders.get(tag, _decode_opaque)(tag, data[pos:pos + length])))
            pos += length
    except UnicodeDecodeError:
        raise IsnsFormatError(f"attribute {tag}: not UTF-8") from None
    return tuple(out)


# -- messages ------------------------------------------------------------------------


_FLAG_VALUES: dict[int, Flags] = Flags._value2member_map_  # type: ignore[assignment]


def _flags(n: int) -> Flags:
    """Flags(n) without the enum machinery's ~0.5 µs: the members and every
    combination seen so far are in its value map."""
    known = _FLAG_VALUES.get(n)
    return known if known is not None else Flags(n)


def decode_message(function: int, xid: int, flags: int, payload: bytes) -> Message:
    """A message from its (joined) payload."""
    status = None
    if function == Function.HEARTBEAT:  # a fixed layout, not attributes: see Heartbeat
        Heartbeat.unpack(payload)
        return Message(function, xid, (), _flags(flags & 0xFFFF))
    if function & RESPONSE:
        if len(payload) < 4:
            raise IsnsFormatError("a response starts with a 4-byte status")
        (code,) = _U32.unpack_from(payload)
        status = Status(code) if code in Status._value2member_map_ else code
        payload = payload[4:]
    return Message(function, xid, decode_attrs(payload), _flags(flags & 0xFFFF), status)


def encode_message(msg: Message, max_payload: int = MAX_PDU_PAYLOAD) -> list[bytes]:
    """The message as PDUs, each holding whole attributes (§5.4)."""
    head = b"" if msg.status is None else _U32.pack(int(msg.status))
    raws = [a._encoded or _tlv(a) for a in msg.attrs]  # _tlv's memo, read without a call
    if len(head) + sum(map(len, raws)) <= max_payload:
        chunks = [head + b"".join(raws)]  # the usual case: one PDU
    else:
        chunks = []
        current = head
        for raw in raws:
            if len(current) + len(raw) > max_payload and current:
                chunks.append(current)
                current = b""
            current += raw
        chunks.append(current)
    base = int(msg.flags) & ~_FIRST_LAST
    # the server sends responses and its own SCN/ESI requests; clients answer those (§5.1.4)
    server_sent = msg.is_response != (msg.function & ~RESPONSE in _SERVER_REQUESTS)
    base |= _SERVER if server_sent else _CLIENT
    last = len(chunks) - 1
    return [HEADER.pack(VERSION, msg.function, len(chunk),
                        base | (_FIRST if seq == 0 else 0) | (_LAST if seq == last else 0), msg.xid, seq) + chunk
            for seq, chunk in enumerate(chunks)]


@dataclass
class Reassembler:
    """Joins the PDUs of one connection into messages (§5.4): PDUs of a
    message share function and transaction ID and count sequence IDs up
    from 0; a message ends at the PDU flagged LAST_PDU.

    What a peer may leave half-joined is bounded, as each open message is
    memory it chose to hold: at most ``max_open`` messages at once, their
    bytes together at most ``max_message``, each kept ``max_age`` seconds
    from its first PDU (``now`` is the caller's clock). Past a bound the
    PDU is refused with :class:`IsnsFormatError`; an aged message is
    dropped silently by the next ``feed`` or by ``expire``."""

    max_message: int = 1 << 20  # bytes the open messages may gather together
    max_open: int = 4  # messages begun and not yet ended (a client has one request out at a time)
    max_age: float = math.inf  # seconds a message may take from its first PDU to its last
    held: int = 0  # bytes held now in open messages
    # by (function, transaction ID): next sequence ID, bytes so far, first PDU's flags, when it began
    _parts: dict[tuple[int, int], tuple[int, bytearray, int, float]] = field(default_factory=dict)

    def feed(self, header: Header, payload: bytes, now: float = 0.0) -> Message | None:
        if header.version != VERSION:
            raise IsnsFormatError(f"iSNSP version {header.version} (this server speaks {VERSION})")
        key = (header.function, header.xid)
        if header.flags & _FIRST_LAST == _FIRST_LAST and header.seq == 0:
            # a message in one PDU, as nearly all are: no joining (what the general path does with it)
            if self._parts:
                self._drop(key)
            if len(payload) > self.max_message:
                raise IsnsFormatError(f"message longer than {self.max_message} bytes")
            return decode_message(header.function, header.xid, header.flags, bytes(payload))
        if self._parts:
            self.expire(now)
        if header.flags & _FIRST or key not in self._parts:
            self._begin(key, header, now)
        seq, data, flags, began = self._parts[key]
        if header.seq != seq:
            self._drop(key)
            raise IsnsFormatError(f"PDU sequence {header.seq} where {seq} was expected")
        data += payload
        self.held += len(payload)
        if self.held > self.max_message:
            self._drop(key)
            raise IsnsFormatError(f"messages longer than {self.max_message} bytes together")
        if not header.flags & _LAST:
            self._parts[key] = (seq + 1, data, flags, began)
            return None
        self._drop(key)
        return decode_message(header.function, header.xid, flags, bytes(data))

    def _begin(self, key: tuple[int, int], header: Header, now: float) -> None:
        if header.seq != 0:
            raise IsnsFormatError(f"PDU {header.seq} of a message whose first PDU was not seen")
        self._drop(key)
        if len(self._parts) >= self.max_open:
            raise IsnsFormatError(f"more than {self.max_open} messages begun and not ended")
        self._parts[key] = (0, bytearray(), header.flags, now)

    def _drop(self, key: tuple[int, int]) -> None:
        part = self._parts.pop(key, None)
        if part is not None:
            self.held -= len(part[1])

    def expire(self, now: float) -> int:
        """Drop the messages begun more than ``max_age`` seconds before
        ``now``; how many were dropped."""
        old = [key for key, part in self._parts.items() if now - part[3] > self.max_age]
        for key in old:
            self._drop(key)
        return len(old)

    @property
    def open(self) -> int:
        """Messages begun and not ended."""
        return len(self._parts)

    def oldest(self) -> float:
        """When the oldest open message began (inf: none is open)."""
        return min((part[3] for part in self._parts.values()), default=math.inf)


def request(function: int, xid: int, source: Attr, keys: Iterable[Attr] = (), operating: Iterable[Attr] = (),
            flags: Flags = Flags(0)) -> Message:
    """A request: source, message key, delimiter, operating attributes (§5.6.1)."""
    return Message(function, xid, (source, *keys, Attr(Tag.DELIMITER), *operating), flags)


def response(req: Message, status: Status, attrs: Iterable[Attr] = ()) -> Message:
    return Message(req.function | RESPONSE, req.xid, tuple(attrs), _NO_FLAGS, status)


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
