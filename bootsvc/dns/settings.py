"""``dns.forward`` and ``dns.allow``: where names outside the domain are
forwarded, and for whom (docs/security.md: never an open resolver).

``dns.forward`` lists upstream resolvers (``ADDR[:PORT]``); left out, it is
the host's own /etc/resolv.conf nameservers, less any that is bootsvc's own
listen.dns (forwarding to ourselves would loop). ``[]`` or ``false`` turns
forwarding off: names outside the domain are REFUSED as before.

Forwarding is done only for clients in the DHCP subnets, on loopback, or in
``dns.allow``; everyone else is REFUSED for names outside the domain.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..address import HostPort
from ..yamlfile import Checker, LineMap, plain

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLV_CONF = Path("/etc/resolv.conf")
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
FORWARD_KEYS = {"forward", "allow"}


@dataclass(frozen=True)
class Forwarding:
    """Upstreams (empty: forwarding off) and who may use them."""

    upstreams: tuple[HostPort, ...] = ()
    allowed: tuple[Network, ...] = LOOPBACK
    origin: str = "dns.forward"  # where the upstreams came from, for the operator
    local: tuple[Network, ...] = ()  # the DHCP subnets: their reverse names are never forwarded

    def is_local(self, address: ipaddress.IPv4Address | None) -> bool:
        return address is not None and any(address in n for n in self.local)

    def allows(self, source: str) -> bool:
        """Whether ``source`` (a client's address) may have names forwarded."""
        try:
            address = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's IPv4 client
        return any(address in n for n in self.allowed)

    def describe(self) -> str:
        if not self.upstreams:
            return "names outside the domain refused (no upstream)"
        nets = ", ".join(dict.fromkeys("loopback" if n in LOOPBACK else str(n) for n in self.allowed))
        return f"forwarding to {', '.join(map(str, self.upstreams))} ({self.origin}) for {nets}"


def resolv_conf_nameservers(path: Path) -> list[HostPort]:
    """The ``nameserver`` lines of a resolv.conf (resolv.conf(5)); none if
    it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(HostPort(str(ipaddress.ip_address(words[1])), 53))  # a link-local keeps its %scope
            except ValueError:
                continue
    return found


def _is_local(host: str) -> bool:
    """Whether ``host`` is one of this machine's addresses (binding to it works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def is_self(upstream: HostPort, listen: HostPort | None) -> bool:
    """Whether forwarding to ``upstream`` would reach bootsvc's own listen.dns."""
    if listen is None or upstream.port != listen.port:
        return False
    if listen.host in ("0.0.0.0", "::", ""):
        return ipaddress.ip_address(upstream.host).is_loopback or _is_local(upstream.host)
    return _is_ip(listen.host) and ipaddress.ip_address(upstream.host) == ipaddress.ip_address(listen.host)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _upstreams(c: Checker, m: LineMap, listen: HostPort | None) -> tuple[list[HostPort], str]:
    """``dns.forward``, or /etc/resolv.conf's nameservers without it."""
    raw = m.get("forward", True)
    if raw is True:
        return [u for u in resolv_conf_nameservers(RESOLV_CONF) if not is_self(u, listen)], str(RESOLV_CONF)
    if raw is False or raw is None:
        return [], "dns.forward"
    found = []
    for text in raw if isinstance(raw, list) else [raw]:
        try:
            upstream = HostPort.parse(str(text), default_port=53, what="resolver")
            if not _is_ip(upstream.host):
                raise ValueError(f"{text} is not an IP address (a name would need DNS to find)")
        except ValueError as e:
            c.err(m, "dns.forward", str(e))
            continue
        if is_self(upstream, listen):
            c.err(m, "dns.forward", f"{upstream} is bootsvc's own listen.dns: it would forward to itself")
            continue
        found.append(upstream)
    return found, "dns.forward"


def _allow(c: Checker, m: LineMap) -> list[Network]:
    raw = m.get("allow", [])
    found = []
    for text in raw if isinstance(raw, list) else [raw]:
        try:
            found.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError:
            c.err(m, "dns.allow", f"{plain(text)} is not an address or network like 10.0.0.0/8")
    return found


def load_forwarding(c: Checker, section: LineMap | None, listen: HostPort | None,
                    subnets: tuple[Any, ...] = ()) -> Forwarding:
    """The forwarding of the ``dns`` section (``section``: the section
    itself, None when absent); ``subnets``: the DHCP subnets, whose
    machines may use it."""
    m = section if section is not None else LineMap.empty()
    upstreams, origin = _upstreams(c, m, listen)
    local = tuple(s.network for s in subnets)
    allowed = (*LOOPBACK, *local, *_allow(c, m))
    return Forwarding(tuple(upstreams), tuple(dict.fromkeys(allowed)), origin, local)


def notes(forwarding: Forwarding, listen: HostPort | None, subnets: tuple[Any, ...]) -> list[str]:
    """What ``bootsvc check`` says about DNS; ``subnets``: the DHCP
    subnets, whose ``dns`` machines are given as resolvers (option 6)."""
    if listen is None:
        return []
    handed_out = {str(a) for s in subnets for a in s.dns}
    said = [f"dns: {forwarding.describe()}"]
    ours = listen.host in handed_out or (listen.host in ("0.0.0.0", "::") and any(_is_local(a) for a in handed_out))
    if ours and not forwarding.upstreams:
        said.append("warning: dns: dhcp.dns hands bootsvc out as the machines' resolver, but it forwards "
                    "nothing (dns.forward): they will resolve only their own domain")
    return said
