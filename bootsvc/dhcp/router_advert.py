"""IPv6 router advertisements saying "no IPv6 configuration here" on the
boot network, so boot firmware stops waiting for one.

iPXE configures every NIC with DHCPv4 and IPv6 autoconfiguration at once
and goes on only when both are done; with no router on the network the
IPv6 side gives up after about 16 s of router solicitations, on every boot
(ENVIRONMENT.md). Its configurator finishes at the first solicited router
advertisement without the M and O flags (iPXE net/ndp.c). So bootsvc
answers each Router Solicitation (RFC 4861 §4.1) with a Router
Advertisement (§4.2) that has router lifetime 0 (we are not a default
router, §6.2.5), no flags and no prefixes: hosts learn nothing but that
nothing is coming. Sent to all-nodes, from our link-local address, hop
limit 255 (§6.1.2: receivers drop anything else).

Codec functions are pure; ``RouterAdvertiser`` is the asyncio side, a raw
ICMPv6 socket (the kernel fills in the checksum) bound to one interface."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from ..events import Emit, Kind, no_events
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
OPT_SOURCE_LINK_LAYER = 1
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
HOP_LIMIT = 255
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


@dataclass(frozen=True)
class Solicitation:
    source_mac: str | None  # the Source Link-Layer Address option, if any


def parse_solicitation(data: bytes) -> Solicitation | None:
    """A Router Solicitation (RFC 4861 §4.1) as the raw socket hands it
    over (the ICMPv6 message, no IPv6 header), or None when it is not a
    valid one (§6.1.1: code 0, 8+ bytes, options of non-zero length)."""
    if len(data) < 8 or data[0] != ROUTER_SOLICITATION or data[1] != 0:
        return None
    mac = None
    pos = 8
    while pos < len(data):
        if pos + 2 > len(data) or data[pos + 1] == 0 or pos + 8 * data[pos + 1] > len(data):
            return None
        kind, length = data[pos], 8 * data[pos + 1]
        if kind == OPT_SOURCE_LINK_LAYER and length >= 8:
            mac = data[pos + 2:pos + 8].hex(":")
        pos += length
    return Solicitation(mac)


def advertisement(mac: bytes | None = None) -> bytes:
    """A Router Advertisement (RFC 4861 §4.2): hop limit and timers left
    unspecified (0), no M/O flags, router lifetime 0, no prefixes; with our
    link-layer address when known. Checksum 0: the kernel computes it."""
    ra = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)
    if mac is not None:
        ra += struct.pack("!BB6s", OPT_SOURCE_LINK_LAYER, 1, mac)
    return ra


def _interface_mac(interface: str) -> bytes | None:
    try:
        with open(f"/sys/class/net/{interface}/address") as f:
            return bytes.fromhex(f.read().strip().replace(":", ""))
    except (OSError, ValueError):
        return None


class RouterAdvertiser:
    """Answers Router Solicitations on ``interface``."""

    def __init__(self, interface: str, emit: Emit = no_events) -> None:
        self.interface = interface
        self.emit = emit
        self.sock: socket.socket | None = None
        self.sent = 0

    async def start(self) -> None:
        """Open and join all-routers; an OSError (no such interface, no
        IPv6, no CAP_NET_RAW) is the caller's one-line report."""
        index = socket.if_nametoindex(self.interface)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.index = index
        self.advertisement = advertisement(_interface_mac(self.interface))  # the same for every solicitation
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data, addr = self.sock.recvfrom(1500)
        except OSError:
            return
        rs = parse_solicitation(data)
        if rs is None:
            return
        try:
            self.sock.sendto(self.advertisement, (ALL_NODES, 0, 0, self.index))
        except OSError as e:
            # no link-local address yet (still in DAD): the host solicits again
            self.emit(Kind.RA_FAILED, interface=self.interface, why=str(e))
            return
        self.sent += 1
        self.emit(Kind.RA_SENT, mac=rs.source_mac, peer=addr[0], interface=self.interface)

    async def stop(self) -> None:
        if self.sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except RuntimeError:  # the loop is gone already
                pass
            self.sock.close()
            self.sock = None
