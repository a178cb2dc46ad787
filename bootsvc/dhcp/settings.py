"""The ``dhcp:`` section and ``listen.dhcp`` of the config (DESIGN.md
"Config at a glance"), checked with file:line: key errors."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ..yamlfile import Checker, LineMap
from .message import IPv4
from .responder import Mode, Subnet, UnknownPolicy

DHCP_KEYS = {"mode", "subnet", "range", "router", "dns", "lease_time", "unknown_machines", "domain"}
LISTEN_KEYS = {"interface", "address", "port", "proxy_port"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


@dataclass(frozen=True)
class DhcpSettings:
    subnet: Subnet
    mode: Mode
    unknown: UnknownPolicy
    interface: str | None
    port: int = 67
    proxy_port: int = 4011  # proxy mode only


def parse_duration(value: Any) -> int:
    m = _DURATION.match(str(value))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a duration (like 3600, 30m, 1h, 1d)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def load_dhcp(c: Checker, doc: LineMap, listen: Any, domain: str) -> DhcpSettings | None:
    """None when DHCP is off (no listen.dhcp)."""
    if not isinstance(listen, LineMap) or listen.get("dhcp") is None:
        return None
    ld = c.mapping(listen, "listen.dhcp", listen["dhcp"])
    sect = doc.get("dhcp")
    d = c.mapping(doc, "dhcp", sect) if sect is not None else None
    if ld is None or d is None:
        if d is None and sect is None:
            c.err(doc, "dhcp", "listen.dhcp is set: the dhcp section (subnet, range, ...) is needed")
        return None
    c.unknown(ld, LISTEN_KEYS, "listen.dhcp.")
    c.unknown(d, DHCP_KEYS, "dhcp.")

    def ip(m: LineMap, key: str, where: str) -> IPv4 | None:
        if m.get(key) is None:
            return None
        try:
            return IPv4(str(m[key]))
        except ValueError:
            c.err(m, where, f"{m[key]!r} is not an IPv4 address")
            return None

    address = ip(ld, "address", "listen.dhcp.address")
    if address is None:
        c.err(ld, "listen.dhcp.address", "the server's address on the boot network is needed")
    try:
        network = ipaddress.IPv4Network(str(d.get("subnet", "")), strict=False)
    except ValueError:
        c.err(d, "dhcp.subnet", f"{d.get('subnet')!r} is not a subnet like 10.77.0.0/24")
        return None
    if address is not None and address not in network:
        c.err(ld, "listen.dhcp.address", f"{address} is not in {network}")
    first = last = None
    rng = d.get("range")
    if rng is not None:
        if not isinstance(rng, list) or len(rng) != 2:
            c.err(d, "dhcp.range", "expected [first, last]")
        else:
            try:
                first, last = IPv4(str(rng[0])), IPv4(str(rng[1]))
            except ValueError:
                c.err(d, "dhcp.range", f"{rng!r} are not IPv4 addresses")
            if first is not None and last is not None and not (first in network and last in network
                                                                and first <= last):
                c.err(d, "dhcp.range", f"{first}..{last} is not an ascending range inside {network}")
    dns = d.get("dns", [])
    dns_list = []
    for x in dns if isinstance(dns, list) else [dns]:
        try:
            dns_list.append(IPv4(str(x)))
        except ValueError:
            c.err(d, "dhcp.dns", f"{x!r} is not an IPv4 address")
    lease_time = 3600
    if "lease_time" in d:
        try:
            lease_time = parse_duration(d["lease_time"])
        except ValueError as e:
            c.err(d, "dhcp.lease_time", str(e))
    try:
        mode = Mode(d.get("mode", "authoritative"))
        unknown = UnknownPolicy(d.get("unknown_machines", "ignore"))
    except ValueError as e:
        c.err(d, "dhcp.mode", f"{e} (mode: authoritative|proxy; unknown_machines: ignore|default|discover)")
        return None
    port, proxy_port = ld.get("port", 67), ld.get("proxy_port", 4011)
    for key, value in (("port", port), ("proxy_port", proxy_port)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            c.err(ld, f"listen.dhcp.{key}", f"{value!r} is not a port")
            port, proxy_port = 67, 4011
    if address is None:
        return None
    subnet = Subnet(network, address, first, last, ip(d, "router", "dhcp.router"), tuple(dns_list),
                    str(d.get("domain", domain)), lease_time)
    return DhcpSettings(subnet, mode, unknown, str(ld["interface"]) if ld.get("interface") else None, port,
                        proxy_port)
