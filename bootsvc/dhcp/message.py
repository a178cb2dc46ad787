"""DHCP messages as bootsvc reads and writes them (RFC 2131 §2 message
format, RFC 2132 options, RFC 3396 long options, RFC 4578 PXE client
options): requests read by a plain option walk, replies packed with
``struct`` (scapy reads them back in the tests). Decoding checks everything a responder relies on and
raises :class:`DhcpFormatError` naming the problem; nothing else escapes."""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the magic cookie (RFC 2131 §2)
MIN_REQUEST = BOOTP_FIXED + 4 + 3  # cookie and option 53
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s")  # op .. chaddr (RFC 2131 §2); sname and file are not read
BROADCAST_FLAG = 0x8000
IPv4 = ipaddress.IPv4Address
ANY = IPv4("0.0.0.0")


class DhcpFormatError(ValueError):
    """A packet bootsvc will not answer; the message says why."""


class MessageType(IntEnum):
    """Option 53 (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    ROOT_PATH = 17
    BROADCAST = 28
    VENDOR_SPECIFIC = 43  # PXE: suboptions (PXE 2.1 §2.4.6)
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    CLIENT_ARCH = 93  # RFC 4578 §2.1
    CLIENT_NDI = 94
    UUID = 97
    IPXE_ENCAPSULATED = 175
    IPXE_INITIATOR_IQN = 203  # iPXE's "initiator-iqn" setting (RFC 4173 leaves it to 17 + this)


class ClientArch(IntEnum):
    """Option 93 values (RFC 4578 §2.1, IANA "Processor Architecture Types")."""

    BIOS = 0
    EFI_IA32 = 6
    EFI_X64 = 7
    EFI_BC = 9
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    EFI_IA32_HTTP = 15
    EFI_X64_HTTP = 16
    EFI_ARM64_HTTP = 19


class Request(NamedTuple):
    """A client's BOOTREQUEST with the options a boot server looks at. A
    named tuple, not a frozen dataclass: as immutable, and made in a
    fraction of the time on every packet's path."""

    xid: int
    mac: str  # lowercase colon form
    msg_type: MessageType
    flags: int = 0
    secs: int = 0
    hops: int = 0
    ciaddr: IPv4 = ANY
    giaddr: IPv4 = ANY
    requested_ip: IPv4 | None = None
    server_id: IPv4 | None = None
    client_id: bytes = b""
    hostname: str = ""
    vendor_class: bytes = b""
    user_class: bytes = b""
    arch: int | None = None
    uuid: bytes = b""
    ipxe_options: bytes | None = None  # option 175, present only when iPXE sends it
    param_request: tuple[int, ...] = ()
    max_size: int = 576

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def pxe(self) -> bool:
        """A PXE boot ROM or iPXE (option 60 starts with PXEClient)."""
        return self.vendor_class.startswith(b"PXEClient")

    @property
    def http(self) -> bool:
        """A UEFI HTTP-boot client (option 60 starts with HTTPClient, UEFI
        2.10 §24.7.2): it takes a boot file URL, not a TFTP name."""
        return self.vendor_class.startswith(b"HTTPClient")

    @property
    def firmware(self) -> bool:
        """A boot firmware (PXE ROM, UEFI PXE or HTTP boot, iPXE), not an
        OS's own DHCP client: its asking starts a new boot."""
        return self.pxe or self.ipxe or self.http

    @property
    def ipxe(self) -> bool:
        """iPXE itself (user class "iPXE" or its option 175): give it the boot
        target, not the iPXE binary again (no chain-load loop)."""
        return b"iPXE" in self.user_class or self.ipxe_options is not None


def decode(data: bytes) -> Request:
    """A BOOTREQUEST from the wire (RFC 2131 §2, §4.1)."""
    _check_fixed(data)
    _op, _htype, _hlen, hops, xid, secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr = \
        HEADER.unpack_from(data)
    opts = _options(data)
    return Request(
        xid=xid, mac=chaddr[:6].hex(":"), msg_type=_message_type(opts), flags=flags,
        secs=secs, hops=hops, ciaddr=_address(ciaddr), giaddr=_address(giaddr),
        requested_ip=_optional_ip(opts, Option.REQUESTED_IP),
        server_id=_optional_ip(opts, Option.SERVER_ID),
        client_id=opts.get(Option.CLIENT_ID, b""),
        hostname=opts.get(Option.HOSTNAME, b"").decode("ascii", "replace"),
        vendor_class=opts.get(Option.VENDOR_CLASS, b""),
        user_class=opts.get(Option.USER_CLASS, b""),
        arch=_arch(opts), uuid=opts.get(Option.UUID, b""),
        ipxe_options=opts.get(Option.IPXE_ENCAPSULATED),
        param_request=tuple(opts.get(Option.PARAM_REQUEST, b"")),
        max_size=_max_size(opts),
    )


@functools.lru_cache(maxsize=1024)
def _address(packed: bytes) -> IPv4:
    """An address field: the same few (0.0.0.0, the relays) on most
    packets, made once each."""
    return IPv4(packed)


def _check_fixed(data: bytes) -> None:
    """The fixed part: long enough, a request, Ethernet, the magic cookie
    (RFC 2131 §2, §3)."""
    if len(data) < MIN_REQUEST:
        raise DhcpFormatError(f"truncated: {len(data)} bytes")
    if data[0] != 1:
        raise DhcpFormatError(f"op {data[0]} is not BOOTREQUEST")
    if data[1] != 1 or data[2] != 6:
        raise DhcpFormatError(f"hardware type {data[1]}/length {data[2]} is not Ethernet")
    if data[BOOTP_FIXED:BOOTP_FIXED + 4] != MAGIC_COOKIE:
        raise DhcpFormatError("no DHCP magic cookie")


PAD, END = 0, 255


def _options(data: bytes) -> dict[int, bytes]:
    """The options field as code -> value. An option that appears more
    than once is one option whose value is the pieces concatenated in
    order (RFC 3396 §5: udhcpc sends its own option 60 beside a given
    one). Overload (RFC 2132 §9.3) is refused: sname and file are never
    read. A plain walk over code-length-value: the hot path under load."""
    opts: dict[int, bytes] = {}
    i, n = BOOTP_FIXED + 4, len(data)
    while i < n:
        code = data[i]
        if code == END:
            break
        if code == PAD:
            i += 1
            continue
        if i + 1 >= n or i + 2 + data[i + 1] > n:
            raise DhcpFormatError(f"option {code} runs past the end of the packet")
        value = data[i + 2:i + 2 + data[i + 1]]
        opts[code] = opts[code] + value if code in opts else value
        i += 2 + data[i + 1]
    if Option.OVERLOAD in opts:
        raise DhcpFormatError("option overload (52) is not accepted")
    return opts


_MESSAGE_TYPES = {int(t): t for t in MessageType}


def _message_type(opts: dict[int, bytes]) -> MessageType:
    """Option 53, one a client sends (RFC 2132 §9.6)."""
    raw = opts.get(Option.MESSAGE_TYPE)
    if raw is None:
        raise DhcpFormatError("no message type (option 53)")
    if len(raw) != 1:
        raise DhcpFormatError(f"message type (option 53) is {len(raw)} bytes, not 1")
    msg_type = _MESSAGE_TYPES.get(raw[0])
    if msg_type is None:
        raise DhcpFormatError(f"message type {raw[0]} is unknown")
    if msg_type in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
        raise DhcpFormatError(f"{msg_type.name} is a server message")
    return msg_type


def _arch(opts: dict[int, bytes]) -> int | None:
    """Option 93's first architecture (RFC 4578 §2.1: a list of 16-bit types)."""
    raw = opts.get(Option.CLIENT_ARCH)
    if raw is None:
        return None
    if len(raw) < 2:
        raise DhcpFormatError("option 93 is shorter than 2 bytes")
    return int.from_bytes(raw[:2], "big")


def _max_size(opts: dict[int, bytes]) -> int:
    """Option 57; below 576 (or not 16 bits) it is 576 (RFC 2132 §9.10)."""
    raw = opts.get(Option.MAX_SIZE, b"")
    size = int.from_bytes(raw, "big") if len(raw) == 2 else 0
    return size if size >= 576 else 576


def _optional_ip(opts: dict[int, bytes], code: Option) -> IPv4 | None:
    raw = opts.get(code)
    if raw is None:
        return None
    if len(raw) != 4:
        raise DhcpFormatError(f"option {int(code)} is not an IPv4 address ({len(raw)} bytes)")
    return _address(raw)


@dataclass
class Reply:
    """A BOOTREPLY to build (RFC 2131 §4.3.1 table 3)."""

    request: Request
    msg_type: MessageType
    server_id: IPv4
    yiaddr: IPv4 = ANY
    siaddr: IPv4 = ANY  # next-server (TFTP)
    bootfile: str = ""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    # the fields of the event the server says once this reply has left (an
    # ACK's dhcp.ack: only after its lease is durable, bootsvc/dhcp/service.py)
    said: dict[str, object] | None = None

    def add(self, code: int, value: OptionValue, width: int = 4) -> None:
        self.options.append((code, option_bytes(value, width)))


OptionValue = bytes | str | IPv4 | int | list[IPv4]


def option_bytes(value: OptionValue, width: int = 4) -> bytes:
    """An option's value on the wire (RFC 2132): addresses packed, text
    encoded, numbers big-endian in ``width`` bytes."""
    if isinstance(value, IPv4):
        return value.packed
    if isinstance(value, list):
        return b"".join(v.packed for v in value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return value.to_bytes(width, "big")
    return value


REPLY_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")  # op .. file and the magic cookie (RFC 2131 §2)
MIN_REPLY = 300  # bytes: some boot ROMs drop shorter replies (BOOTP's 64-byte vend field, RFC 951)


def encode(reply: Reply) -> bytes:
    """A BOOTREPLY's bytes (RFC 2131 §2, §4.3.1): the fixed header by one
    ``struct`` call and the options as code-length-value, values longer
    than 255 bytes split into several instances (RFC 3396). Packed by hand:
    scapy's field machinery cost three quarters of a DORA's time under
    load; scapy stays the reference that reads them back in the tests."""
    r = reply.request
    parts = [REPLY_HEADER.pack(2, 1, 6, 0, r.xid, 0, r.flags, r.ciaddr.packed, reply.yiaddr.packed,
                               reply.siaddr.packed, r.giaddr.packed, _chaddr(r.mac), b"",
                               reply.bootfile.encode()[:127], MAGIC_COOKIE),
             bytes((Option.MESSAGE_TYPE, 1, reply.msg_type, Option.SERVER_ID, 4)), reply.server_id.packed]
    for code, raw in reply.options:
        if len(raw) <= 255:
            parts.append(bytes((code, len(raw))))
            parts.append(raw)
            continue
        for i in range(0, len(raw), 255):
            piece = raw[i:i + 255]
            parts.append(bytes((code, len(piece))))
            parts.append(piece)
    parts.append(b"\xff")
    data = b"".join(parts)
    return data if len(data) >= MIN_REPLY else data.ljust(MIN_REPLY, b"\0")


def _chaddr(mac: str) -> bytes:
    """A MAC's 16-byte chaddr field (RFC 2131 §2), the MAC in its first 6."""
    return bytes.fromhex(mac.replace(":", ""))
