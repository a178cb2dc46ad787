"""DHCP messages as bootsvc reads and writes them, on top of scapy's BOOTP
and DHCP layers (RFC 2131 §2 message format, RFC 2132 options, RFC 4578
PXE client options). Decoding checks everything a responder relies on and
raises :class:`DhcpFormatError` naming the problem; nothing else escapes."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the magic cookie (RFC 2131 §2)
MIN_REQUEST = BOOTP_FIXED + 4 + 3  # cookie and option 53
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s")  # op .. chaddr (RFC 2131 §2); sname and file are not read
OPTIONS_FIELD = DHCP.fields_desc[0]  # scapy's DHCPOptionsField: the options codec
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


@dataclass(frozen=True)
class Request:
    """A client's BOOTREQUEST with the options a boot server looks at."""

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
    def ipxe(self) -> bool:
        """iPXE itself (user class "iPXE" or its option 175): give it the boot
        target, not the iPXE binary again (no chain-load loop)."""
        return b"iPXE" in self.user_class or self.ipxe_options is not None


def _ip(value: Any, what: str) -> IPv4:
    try:
        return IPv4(value if isinstance(value, str) else bytes(value))
    except (ValueError, TypeError):  # TypeError: scapy gives a tuple of addresses for an option longer than 4 bytes
        raise DhcpFormatError(f"{what} is not an IPv4 address") from None


def decode(data: bytes) -> Request:
    """A BOOTREQUEST from the wire (RFC 2131 §2, §4.1)."""
    _check_fixed(data)
    # The fixed header by struct; the options, the part worth a library, by
    # scapy's DHCP options field (what DHCP() would run, without building
    # two Packet objects per datagram: this is the hot path under load).
    _op, _htype, _hlen, hops, xid, secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr = \
        HEADER.unpack_from(data)
    opts = _options(data)
    msg_type = _message_type(opts)
    arch = _arch(opts)
    return Request(
        xid=xid, mac=":".join(f"{b:02x}" for b in chaddr[:6]), msg_type=msg_type, flags=flags,
        secs=secs, hops=hops, ciaddr=IPv4(ciaddr), giaddr=IPv4(giaddr),
        requested_ip=_optional_ip(opts, "requested_addr", "option 50"),
        server_id=_optional_ip(opts, "server_id", "option 54"),
        client_id=_bytes(opts.get("client_id", b"")),
        hostname=_bytes(opts.get("hostname", b"")).decode("ascii", "replace"),
        vendor_class=_bytes(opts.get("vendor_class_id", b"")),
        user_class=_bytes(opts.get("user_class", b"")),
        arch=arch, uuid=_bytes(opts.get("pxe_client_machine_identifier", b"")),
        ipxe_options=_bytes(opts[175]) if 175 in opts else None,
        param_request=tuple(opts.get("param_req_list", ()) or ()),
        max_size=_max_size(opts),
    )


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


def _options(data: bytes) -> dict[Any, Any]:
    """The options by scapy's name (or code), each at most once; overload
    (RFC 2132 §9.3) is refused: sname and file are never read."""
    try:
        options = OPTIONS_FIELD.m2i(None, data[BOOTP_FIXED + 4:])
    except Exception as e:  # scapy's dissectors raise what they like; the packet is what is wrong
        raise DhcpFormatError(f"undecodable: {e}") from None
    opts: dict[Any, Any] = {}
    for item in options:
        if item in ("end", "pad"):
            continue
        if not isinstance(item, tuple) or len(item) < 2:
            raise DhcpFormatError("an option runs past the end of the packet")
        key = item[0]
        if key in opts:
            raise DhcpFormatError(f"option {key} appears twice")
        opts[key] = item[1] if len(item) == 2 else item[1:]
    if "dhcp-option-overload" in opts:
        raise DhcpFormatError("option overload (52) is not accepted")
    return opts


def _message_type(opts: dict[Any, Any]) -> MessageType:
    """Option 53, one a client sends (RFC 2132 §9.6)."""
    if "message-type" not in opts:
        raise DhcpFormatError("no message type (option 53)")
    try:
        msg_type = MessageType(opts["message-type"])
    except (ValueError, TypeError):
        raise DhcpFormatError(f"message type {opts['message-type']!r} is unknown") from None
    if msg_type in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
        raise DhcpFormatError(f"{msg_type.name} is a server message")
    return msg_type


def _arch(opts: dict[Any, Any]) -> int | None:
    """Option 93's first architecture (RFC 4578 §2.1: a list of 16-bit types)."""
    arch = opts.get("pxe_client_architecture")
    if arch is None:
        return None
    raw = bytes(arch) if not isinstance(arch, int) else arch.to_bytes(2, "big")
    if len(raw) < 2:
        raise DhcpFormatError("option 93 is shorter than 2 bytes")
    return int.from_bytes(raw[:2], "big")


def _max_size(opts: dict[Any, Any]) -> int:
    """Option 57; below 576 (or not a number) it is 576 (RFC 2132 §9.10)."""
    max_size = opts.get("max_dhcp_size", 576)
    return max_size if isinstance(max_size, int) and max_size >= 576 else 576


def _optional_ip(opts: dict[Any, Any], key: str, what: str) -> IPv4 | None:
    return _ip(opts[key], what) if key in opts else None


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (list, tuple)):
        return b"".join(_bytes(v) for v in value)
    return bytes(value) if not isinstance(value, int) else bytes([value & 0xFF])


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

    def add(self, code: int, value: bytes | str | IPv4 | int | list[IPv4], width: int = 4) -> None:
        if isinstance(value, IPv4):
            raw = value.packed
        elif isinstance(value, list):
            raw = b"".join(v.packed for v in value)
        elif isinstance(value, str):
            raw = value.encode()
        elif isinstance(value, int):
            raw = value.to_bytes(width, "big")
        else:
            raw = value
        self.options.append((code, raw))


def encode(reply: Reply) -> bytes:
    r = reply.request
    options: list[Any] = [("message-type", int(reply.msg_type)), ("server_id", str(reply.server_id))]
    for code, raw in reply.options:
        for i in range(0, max(len(raw), 1), 255):  # RFC 3396: long values split into several instances
            options.append((int(code), raw[i:i + 255]))
    options.append("end")
    mac = bytes.fromhex(r.mac.replace(":", ""))
    header = BOOTP(op=2, htype=1, hlen=6, hops=0, xid=r.xid, secs=0, flags=r.flags, ciaddr=str(r.ciaddr),
                   yiaddr=str(reply.yiaddr), siaddr=str(reply.siaddr), giaddr=str(r.giaddr),
                   chaddr=mac + bytes(10), file=reply.bootfile.encode()[:127])
    # header fields and options by scapy's fields; no DHCP() layer object to build and copy (4x faster)
    data = header.self_build() + MAGIC_COOKIE + OPTIONS_FIELD.i2m(None, options)
    return data if len(data) >= 300 else data.ljust(300, b"\0")  # some ROMs drop replies under 300 bytes
