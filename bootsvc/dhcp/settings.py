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
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..inventory import Machine
from ..names import domain_problem
from ..yamlfile import Checker, LineMap, plain
from .bootfiles import DEFAULT_BOOTFILES, Firmware, load_bootfiles
from .message import IPv4
from .responder import Mode, Subnet, UnknownPolicy

SUBNET_KEYS = {"subnet", "range", "router", "dns", "lease_time", "domain", "server"}
DHCP_KEYS = {"mode", "unknown_machines", "max_adopted", "adopted_expiry", "subnets", "ipv6_ra",
             "bootfiles", "process"} | SUBNET_KEYS
MAX_ADOPTED = 64  # unknown_machines: default makes at most this many machines (each has a disk)
ADOPTED_EXPIRY = 600  # seconds an adopted machine has to log in to its disk before it is forgotten
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
    max_adopted: int = MAX_ADOPTED
    adopted_expiry: int = ADOPTED_EXPIRY  # 0: an adopted machine is kept even if it never boots
    bootfiles: Mapping[Firmware, str] = field(default_factory=lambda: DEFAULT_BOOTFILES)  # the iPXE binary each firmware is sent
    # answer in a worker process of its own (bootsvc/dhcp/worker.py) or on serve's loop
    process: Process = field(default_factory=lambda: default_process())

    def server_for(self, client: IPv4 | None) -> IPv4:
        """Our DHCP address as a client of that address reaches it."""
        for s in self.subnets:
            if client is not None and client in s.network:
                return s.server
        return self.listeners[0].address


@dataclass(frozen=True)
class Socket:
    """One port DHCP answers on: a listener's port 67, or in proxy mode its
    port 4011 too (PXE spec §2.2.5), where the answer goes back to the
    asking address and port."""

    name: str  # as serve's start lines say it
    listener: Listener
    port: int
    proxy_port: bool
    description: str


def sockets(d: DhcpSettings) -> list[Socket]:
    """Every DHCP socket of ``d``, in the order serve opens them."""
    several = len(d.listeners) > 1
    out = []
    for one in d.listeners:
        # every socket answers from the one responder: one lease table, one inventory
        suffix = f" {one.interface}" if several else ""
        served = ", ".join(str(s.network) for s in d.subnets if s.server == one.address)
        out.append(Socket(f"dhcp ({d.mode.value}){suffix}", one, one.port, False, f"{one}, {served}"))
        if d.mode is Mode.PROXY:  # iPXE and PXE ROMs send their proxyDHCP REQUEST to port 4011
            out.append(Socket(f"proxydhcp{suffix}", one, one.proxy_port, True,
                              f"{one.interface or 'all interfaces'}:{one.proxy_port}"))
    return out


class Process(str, Enum):
    """Where DHCP is answered (docs/dhcp-scaling.md)."""

    WORKER = "worker"  # a process of its own, with its own interpreter lock
    INLINE = "inline"  # serve's own loop, beside iSCSI, TFTP and the rest


def default_process() -> Process:
    """A worker where there is a second core for it to run on: with one,
    the two processes only share it and the worker's pipe costs more than
    it gives (docs/dhcp-scaling.md)."""
    return Process.WORKER if (os.cpu_count() or 1) > 1 else Process.INLINE


def parse_duration(value: Any) -> int:
    m = _DURATION.match(str(value))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{plain(value)} is not a duration (like 3600, 30m, 1h, 1d)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _ip(c: Checker, m: LineMap, key: str, where: str) -> IPv4 | None:
    if m.get(key) is None:
        return None
    try:
        return IPv4(str(m[key]))
    except ValueError:
        c.err(m, where, f"{plain(m[key])} is not an IPv4 address")
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
            c.err(ld, f"{where}.{key}", f"{plain(value)} is not a port (1-65535)")
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


def _inherited(d: LineMap, defaults: LineMap, key: str, fallback: Any = None) -> tuple[LineMap, Any]:
    """A subnet's key, else the dhcp section's, with the mapping it is written in."""
    if key in d:
        return d, d[key]
    return defaults, defaults.get(key, fallback)


def _network(c: Checker, d: LineMap, where: str) -> ipaddress.IPv4Network | None:
    if d.get("subnet") is None:
        c.err(d, f"{where}.subnet", "missing: the network it serves, like 10.77.0.0/24")
        return None
    try:
        return ipaddress.IPv4Network(str(d["subnet"]), strict=False)
    except ValueError:
        c.err(d, f"{where}.subnet", f"{plain(d['subnet'])} is not a subnet like 10.77.0.0/24")
        return None


def _range(c: Checker, d: LineMap, where: str, network: ipaddress.IPv4Network) -> tuple[IPv4 | None, IPv4 | None]:
    """``range: [first, last]``, inside the subnet; (None, None) without one."""
    rng = d.get("range")
    if rng is None:
        return None, None
    if not isinstance(rng, list) or len(rng) != 2:
        c.err(d, f"{where}.range", "expected [first, last]")
        return None, None
    first = last = None
    try:
        first, last = IPv4(str(rng[0])), IPv4(str(rng[1]))
    except ValueError:
        c.err(d, f"{where}.range", f"{plain(rng[0])} and {plain(rng[1])} are not both IPv4 addresses")
    if first is not None and last is not None and not (first in network and last in network and first <= last):
        c.err(d, f"{where}.range", f"{first}..{last} is not an ascending range inside {network}")
    return first, last


def _dns(c: Checker, d: LineMap, defaults: LineMap, where: str) -> tuple[IPv4, ...]:
    """``dns``: one address or a list of them (option 6, RFC 2132 §3.8)."""
    m, dns = _inherited(d, defaults, "dns", [])
    found = []
    for x in dns if isinstance(dns, list) else [dns]:
        try:
            found.append(IPv4(str(x)))
        except ValueError:
            c.err(m, f"{where}.dns", f"{plain(x)} is not an IPv4 address")
    return tuple(found)


def _lease_time(c: Checker, d: LineMap, defaults: LineMap, where: str) -> int:
    m, lease = _inherited(d, defaults, "lease_time", 3600)
    try:
        return parse_duration(lease)
    except ValueError as e:
        c.err(m, f"{where}.lease_time", str(e))
        return 3600


def _server(c: Checker, d: LineMap, where: str, network: ipaddress.IPv4Network,
            listeners: list[Listener]) -> IPv4 | None:
    """The address our replies come from: ours on this subnet, else the one
    its relay sends to (RFC 2131 §4.3.1: giaddr)."""
    server = next((one.address for one in listeners if one.address in network), None)
    if server is not None:
        return server
    server = _ip(c, d, "server", f"{where}.server")
    if server is None and d.get("server") is None:
        if len(listeners) == 1:
            server = listeners[0].address
        elif listeners:
            c.err(d, f"{where}.server", f"{network} is relayed: name the address of ours its relay sends to "
                  f"({', '.join(str(one.address) for one in listeners)})")
    if server is not None and server not in {one.address for one in listeners}:
        c.err(d, f"{where}.server", f"{server} is not a listen.dhcp address")
    return server


def _subnet(c: Checker, d: LineMap, defaults: LineMap, where: str, listeners: list[Listener],
            domain: str) -> Subnet | None:
    """One subnet; keys it lacks come from ``defaults`` (the dhcp section)."""
    network = _network(c, d, where)
    if network is None:
        return None
    first, last = _range(c, d, where, network)
    dns = _dns(c, d, defaults, where)
    lease_time = _lease_time(c, d, defaults, where)
    router_in, _ = _inherited(d, defaults, "router")
    router = _ip(c, router_in, "router", f"{where}.router")
    if router is not None and router not in network:
        # option 3 names a gateway on the client's own link (RFC 2132 §3.5): one elsewhere is unreachable
        c.err(router_in, f"{where}.router", f"{router} is outside the subnet {network}")
    server = _server(c, d, where, network, listeners)
    if server is None:
        return None
    return Subnet(network, server, first, last, router, dns, _domain(c, d, defaults, where, domain), lease_time)


def _domain(c: Checker, d: LineMap, defaults: LineMap, where: str, domain: str) -> str:
    """The subnet's domain (option 15), else the section's, else the config's (checked there)."""
    m, value = _inherited(d, defaults, "domain", domain)
    if "domain" in m and (problem := domain_problem(str(value))) is not None:
        c.err(m, f"{where}.domain", problem)
    return str(value)


def check_fixed_ips(c: Checker, dhcp: DhcpSettings, machines: Iterable[Machine]) -> None:
    """A machine's fixed address is one a client on a served subnet can
    have: inside it, neither its network nor its broadcast address
    (RFC 922), and not the server's own."""
    servers = {one.address for one in dhcp.listeners} | {s.server for s in dhcp.subnets}
    for m in machines:
        if m.ip is None:
            continue
        subnet = next((s for s in dhcp.subnets if m.ip in s.network), None)
        problem = None
        if subnet is None:
            problem = f"{m.ip} is in none of the dhcp subnets ({', '.join(str(s.network) for s in dhcp.subnets)})"
        elif m.ip in servers:
            problem = f"{m.ip} is the DHCP server's own address (listen.dhcp address or subnet server)"
        elif subnet.network.prefixlen < 31 and m.ip in (subnet.network.network_address,
                                                         subnet.network.broadcast_address):
            which = "network" if m.ip == subnet.network.network_address else "broadcast"
            problem = f"{m.ip} is the {which} address of {subnet.network}"
        if problem is not None:
            c.at(m.line_of("ip"), f"machines.{m.mac}.ip", problem)


def _section(c: Checker, doc: LineMap) -> LineMap | None:
    """The dhcp section, needed once listen.dhcp is set."""
    sect = doc.get("dhcp")
    if sect is None:
        c.err(doc, "dhcp", "listen.dhcp is set: the dhcp section (subnet, range, ...) is needed")
        return None
    d = c.mapping(doc, "dhcp", sect)
    if d is not None:
        c.unknown(d, DHCP_KEYS, "dhcp.")
    return d


def _subnets(c: Checker, d: LineMap, listeners: list[Listener], domain: str) -> list[Subnet]:
    """The inline subnet, or each of ``dhcp.subnets``."""
    if "subnets" not in d:
        one = _subnet(c, d, d, "dhcp", listeners, domain)
        return [one] if one is not None else []
    if "subnet" in d or "range" in d:
        c.err(d, "dhcp.subnets", "write subnet and range either inline or in subnets, not both")
    entries = d["subnets"]
    if not isinstance(entries, list) or not entries:
        c.err(d, "dhcp.subnets", "expected a list of {subnet, range, router, ...}")
        entries = []
    subnets = []
    for i, entry in enumerate(entries):
        where = f"dhcp.subnets[{i}]"
        sd = c.mapping(d, where, entry)
        if sd is None:
            continue
        c.unknown(sd, SUBNET_KEYS, f"{where}.")
        one = _subnet(c, sd, d, where, listeners, domain)
        if one is not None:
            subnets.append(one)
    return subnets


def _subnet_maps(d: LineMap) -> list[tuple[LineMap, str]]:
    """The mapping of each subnet as written, with its key."""
    if not isinstance(d.get("subnets"), list):
        return [(d, "dhcp")]
    return [(sd, f"dhcp.subnets[{i}]") for i, sd in enumerate(d["subnets"]) if isinstance(sd, LineMap)]


def _check_coverage(c: Checker, d: LineMap, listen: LineMap, listeners: list[Listener],
                    subnets: list[Subnet]) -> None:
    """No two subnets overlap; every listener's address is in one of them."""
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.network.overlaps(b.network):
                c.err(d, "dhcp.subnets", f"{a.network} and {b.network} overlap")
    for one in listeners:
        if not any(one.address in s.network for s in subnets):
            c.err(listen, "listen.dhcp", f"{one.address} is in none of the dhcp subnets")


def _choice(c: Checker, d: LineMap, key: str, kind: type[Mode] | type[UnknownPolicy] | type[Process],
            default: str) -> Any:
    value = d.get(key, default)
    try:
        return kind(value)
    except (ValueError, TypeError):  # TypeError: a list or mapping
        c.err(d, f"dhcp.{key}", f"expected {' or '.join(k.value for k in kind)}, got {plain(value)}")
        return None


def _policies(c: Checker, d: LineMap) -> tuple[Mode, UnknownPolicy] | None:
    mode = _choice(c, d, "mode", Mode, "authoritative")
    unknown = _choice(c, d, "unknown_machines", UnknownPolicy, "ignore")
    return None if mode is None or unknown is None else (mode, unknown)


def _ipv6_ra(c: Checker, d: LineMap, mode: Mode) -> bool:
    """On by default where we are the DHCP server (DhcpSettings.ipv6_ra)."""
    ipv6_ra = d.get("ipv6_ra", mode is Mode.AUTHORITATIVE)
    if not isinstance(ipv6_ra, bool):
        c.err(d, "dhcp.ipv6_ra", f"expected true or false, got {plain(ipv6_ra)}")
        return False
    return ipv6_ra


def load_dhcp(c: Checker, doc: LineMap, listen: Any, domain: str) -> DhcpSettings | None:
    """None when DHCP is off (no listen.dhcp)."""
    if not isinstance(listen, LineMap) or listen.get("dhcp") is None:
        return None
    d = _section(c, doc)
    if d is None:
        return None
    listeners = _listeners(c, listen)
    subnets = _subnets(c, d, listeners or [], domain)
    _check_coverage(c, d, listen, listeners or [], subnets)
    policies = _policies(c, d)
    if policies is None:
        return None
    mode, unknown = policies
    if mode is Mode.PROXY:
        for sd, where in _subnet_maps(d):
            if "range" in sd:
                c.warn(sd, f"{where}.range", "proxy mode never hands out addresses: the range is not used "
                                             "(the other DHCP server gives them)")
    ipv6_ra = _ipv6_ra(c, d, mode)
    max_adopted = c.integer(d, "max_adopted", "dhcp.max_adopted", MAX_ADOPTED, 100_000, "machines")
    adopted_expiry = c.integer(d, "adopted_expiry", "dhcp.adopted_expiry", ADOPTED_EXPIRY, 365 * 86400,
                               "seconds, 0: never")
    bootfiles = load_bootfiles(c, d)
    process = _choice(c, d, "process", Process, default_process().value)
    if not listeners or not subnets or process is None:
        return None
    return DhcpSettings(tuple(subnets), tuple(listeners), mode, unknown, ipv6_ra, max_adopted, adopted_expiry,
                        bootfiles, process)
