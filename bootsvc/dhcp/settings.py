"""The ``dhcp:`` section and ``listen.dhcp`` of the config (DESIGN.md
"Config at a glance"), checked with file:line: key errors.

One subnet is written inline (``dhcp: {subnet: ..., range: ...}``); several
go in ``dhcp.subnets``, each with the same keys, the section's own ``dns``,
``domain``, ``router`` and ``lease_time`` being their defaults. A subnet that
holds a ``listen.dhcp`` address is served on that interface; any other is
reached through a relay agent (giaddr, RFC 2131 §4.3.1) and names the
server address the relay sends to (``server:``, needed only when bootsvc
listens on more than one interface).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ..yamlfile import Checker, LineMap
from .message import IPv4
from .responder import Mode, Subnet, UnknownPolicy

SUBNET_KEYS = {"subnet", "range", "router", "dns", "lease_time", "domain", "server"}
DHCP_KEYS = {"mode", "unknown_machines", "subnets", "ipv6_ra"} | SUBNET_KEYS
LISTEN_KEYS = {"interface", "address", "port", "proxy_port"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


@dataclass(frozen=True)
class Listener:
    """One ``listen.dhcp`` entry: a socket on port 67 (and 4011 in proxy mode)."""

    address: IPv4  # bootsvc's address on that interface
    interface: str | None
    port: int = 67
    proxy_port: int = 4011  # proxy mode only

    def __str__(self) -> str:
        return f"{self.interface or 'all interfaces'}:{self.port}"


@dataclass(frozen=True)
class DhcpSettings:
    subnets: tuple[Subnet, ...]
    listeners: tuple[Listener, ...]
    mode: Mode
    unknown: UnknownPolicy
    # answer IPv6 router solicitations with "no IPv6 here" (router_advert.py):
    # iPXE then boots ~16 s sooner. On by default only where we are the DHCP
    # server: in proxy mode the network is someone else's.
    ipv6_ra: bool = True

    def server_for(self, client: IPv4 | None) -> IPv4:
        """Our DHCP address as a client of that address reaches it."""
        for s in self.subnets:
            if client is not None and client in s.network:
                return s.server
        return self.listeners[0].address


def parse_duration(value: Any) -> int:
    m = _DURATION.match(str(value))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a duration (like 3600, 30m, 1h, 1d)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _ip(c: Checker, m: LineMap, key: str, where: str) -> IPv4 | None:
    if m.get(key) is None:
        return None
    try:
        return IPv4(str(m[key]))
    except ValueError:
        c.err(m, where, f"{m[key]!r} is not an IPv4 address")
        return None


def _listener(c: Checker, ld: LineMap, where: str) -> Listener | None:
    c.unknown(ld, LISTEN_KEYS, f"{where}.")
    address = _ip(c, ld, "address", f"{where}.address")
    if address is None and ld.get("address") is None:
        c.err(ld, f"{where}.address", "the server's address on the boot network is needed")
    ports = []
    for key, default in (("port", 67), ("proxy_port", 4011)):
        value = ld.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            c.err(ld, f"{where}.{key}", f"{value!r} is not a port")
            value = default
        ports.append(value)
    if address is None:
        return None
    return Listener(address, str(ld["interface"]) if ld.get("interface") else None, *ports)


def _listeners(c: Checker, listen: LineMap) -> list[Listener] | None:
    raw = listen["dhcp"]
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        c.err(listen, "listen.dhcp", "expected {interface, address} or a list of them")
        return None
    found: list[tuple[LineMap, Listener]] = []  # each with its entry, for the line of an error
    for i, entry in enumerate(entries):
        where = "listen.dhcp" if not isinstance(raw, list) else f"listen.dhcp[{i}]"
        ld = c.mapping(listen, where, entry)
        if ld is not None and (one := _listener(c, ld, where)) is not None:
            found.append((ld, one))
    if len(found) > 1:
        # two sockets on port 67 of every interface would steal each other's packets
        for ld, one in found:
            if one.interface is None:
                c.err(ld, "listen.dhcp", f"{one.address}: with several listeners each names its interface")
    return [one for _, one in found] if len(found) == len(entries) else None


def _subnet(c: Checker, d: LineMap, defaults: LineMap, where: str, listeners: list[Listener],
            domain: str) -> Subnet | None:
    """One subnet; keys it lacks come from ``defaults`` (the dhcp section)."""
    def get(key: str, fallback: Any = None) -> tuple[LineMap, Any]:
        if key in d:
            return d, d[key]
        return defaults, defaults.get(key, fallback)

    try:
        network = ipaddress.IPv4Network(str(d.get("subnet", "")), strict=False)
    except ValueError:
        c.err(d, f"{where}.subnet", f"{d.get('subnet')!r} is not a subnet like 10.77.0.0/24")
        return None
    first = last = None
    rng = d.get("range")
    if rng is not None:
        if not isinstance(rng, list) or len(rng) != 2:
            c.err(d, f"{where}.range", "expected [first, last]")
        else:
            try:
                first, last = IPv4(str(rng[0])), IPv4(str(rng[1]))
            except ValueError:
                c.err(d, f"{where}.range", f"{rng!r} are not IPv4 addresses")
            if first is not None and last is not None and not (first in network and last in network
                                                                and first <= last):
                c.err(d, f"{where}.range", f"{first}..{last} is not an ascending range inside {network}")
    m, dns = get("dns", [])
    dns_list = []
    for x in dns if isinstance(dns, list) else [dns]:
        try:
            dns_list.append(IPv4(str(x)))
        except ValueError:
            c.err(m, f"{where}.dns", f"{x!r} is not an IPv4 address")
    m, lease = get("lease_time", 3600)
    try:
        lease_time = parse_duration(lease)
    except ValueError as e:
        c.err(m, f"{where}.lease_time", str(e))
        lease_time = 3600
    m, _ = get("router")
    router = _ip(c, m, "router", f"{where}.router")
    # the address our replies come from: ours on this subnet, else the one its relay sends to
    server = next((one.address for one in listeners if one.address in network), None)
    if server is None:
        server = _ip(c, d, "server", f"{where}.server")
        if server is None and d.get("server") is None:
            if len(listeners) == 1:
                server = listeners[0].address
            elif listeners:
                c.err(d, f"{where}.server", f"{network} is relayed: name the address of ours its relay sends to "
                      f"({', '.join(str(one.address) for one in listeners)})")
        if server is not None and server not in {one.address for one in listeners}:
            c.err(d, f"{where}.server", f"{server} is not a listen.dhcp address")
    if server is None:
        return None
    return Subnet(network, server, first, last, router, tuple(dns_list), str(get("domain", domain)[1]),
                  lease_time)


def load_dhcp(c: Checker, doc: LineMap, listen: Any, domain: str) -> DhcpSettings | None:
    """None when DHCP is off (no listen.dhcp)."""
    if not isinstance(listen, LineMap) or listen.get("dhcp") is None:
        return None
    sect = doc.get("dhcp")
    d = c.mapping(doc, "dhcp", sect) if sect is not None else None
    if d is None:
        if sect is None:
            c.err(doc, "dhcp", "listen.dhcp is set: the dhcp section (subnet, range, ...) is needed")
        return None
    c.unknown(d, DHCP_KEYS, "dhcp.")
    listeners = _listeners(c, listen)
    subnets: list[Subnet] = []
    if "subnets" in d:
        if "subnet" in d or "range" in d:
            c.err(d, "dhcp.subnets", "write subnet and range either inline or in subnets, not both")
        entries = d["subnets"]
        if not isinstance(entries, list) or not entries:
            c.err(d, "dhcp.subnets", "expected a list of {subnet, range, router, ...}")
            entries = []
        for i, entry in enumerate(entries):
            where = f"dhcp.subnets[{i}]"
            one = c.mapping(d, where, entry)
            if one is None:
                continue
            c.unknown(one, SUBNET_KEYS, f"{where}.")
            s = _subnet(c, one, d, where, listeners or [], domain)
            if s is not None:
                subnets.append(s)
    else:
        s = _subnet(c, d, d, "dhcp", listeners or [], domain)
        if s is not None:
            subnets.append(s)
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.network.overlaps(b.network):
                c.err(d, "dhcp.subnets", f"{a.network} and {b.network} overlap")
    for one in listeners or []:
        if not any(one.address in s.network for s in subnets):
            c.err(listen, "listen.dhcp", f"{one.address} is in none of the dhcp subnets")
    try:
        mode = Mode(d.get("mode", "authoritative"))
        unknown = UnknownPolicy(d.get("unknown_machines", "ignore"))
    except ValueError as e:
        c.err(d, "dhcp.mode", f"{e} (mode: authoritative|proxy; unknown_machines: ignore|default|discover)")
        return None
    ipv6_ra = d.get("ipv6_ra", mode is Mode.AUTHORITATIVE)
    if not isinstance(ipv6_ra, bool):
        c.err(d, "dhcp.ipv6_ra", f"expected true or false, got {ipv6_ra!r}")
        ipv6_ra = False
    if not listeners or not subnets:
        return None
    return DhcpSettings(tuple(subnets), tuple(listeners), mode, unknown, ipv6_ra)
