"""This host's network interfaces and addresses, and the config's listen
section checked against them: a DHCP interface that does not exist leaves
the boot network unserved, and a listen address nobody here owns makes the
DHCP offers name a server that never answers.

`bootsvc serve` always checks; `bootsvc check` does unless told the config
is meant for another machine (--elsewhere)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from .address import HostPort
from .yamlfile import Checker, LineMap, plain

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# listen keys written HOST:PORT (or a list of them), with their default ports
LISTEN_PORTS = {"tftp": 69, "http": 80, "dns": 53, "isns": 3205, "iscsi": 3260}
ELSEWHERE = "for a config meant for another machine: bootsvc check --elsewhere"
# listen keys whose address may float: a standby server listens on a portal
# address the other server holds until it dies (keepalived, docs/scale-out.md)
FLOATING_KEYS = {"iscsi"}
NONLOCAL_BIND = "/proc/sys/net/ipv{}/ip_nonlocal_bind"


class HostError(Exception):
    """The host's addresses could not be read."""


@dataclass(frozen=True)
class HostNetwork:
    interfaces: frozenset[str]
    addresses: frozenset[IPAddress]
    # the IP versions (4, 6) this host binds addresses it does not hold
    # (net.ipv4.ip_nonlocal_bind / net.ipv6.ip_nonlocal_bind = 1)
    nonlocal_bind: frozenset[int] = frozenset()

    @classmethod
    def here(cls) -> HostNetwork:
        """This host (or the network namespace this process runs in): the
        kernel's interface list and iproute2's JSON view of the addresses."""
        try:
            out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10,
                                 check=True).stdout
            links = json.loads(out)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            raise HostError(f"cannot list this host's addresses with `ip -j addr show`: {e}") from e
        addresses = {ipaddress.ip_address(a["local"].split("%")[0])
                     for link in links for a in link.get("addr_info", ()) if "local" in a}
        return cls(frozenset(name for _, name in socket.if_nameindex()), frozenset(addresses),
                   frozenset(v for v in (4, 6) if _sysctl(NONLOCAL_BIND.format(v)) == "1"))

    def owns(self, address: IPAddress) -> bool:
        # Linux answers on all of 127.0.0.0/8 through lo's 127.0.0.1/8
        return address in self.addresses or address.is_loopback

    def some_addresses(self) -> str:
        return _some(sorted(str(a) for a in self.addresses if not a.is_loopback and not a.is_link_local)) \
            or "none but loopback"

    def some_interfaces(self) -> str:
        return _some(sorted(self.interfaces))


def _sysctl(path: str) -> str:
    """A sysctl's value; '' when this kernel has none."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _some(names: list[str], shown: int = 8) -> str:
    """The first few of many (a host with a thousand tap devices)."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def check_host(c: Checker, doc: LineMap, host: HostNetwork) -> None:
    """Every listen interface exists here and every listen address is ours."""
    listen = doc.get("listen")
    if not isinstance(listen, LineMap):
        return
    raw = listen.get("dhcp")
    entries = raw if isinstance(raw, list) else [raw] if raw is not None else []
    for i, entry in enumerate(entries):
        where = f"listen.dhcp[{i}]" if isinstance(raw, list) else "listen.dhcp"
        if not isinstance(entry, LineMap):
            continue  # already an error
        if entry.get("interface"):
            name = str(entry["interface"])
            if name not in host.interfaces:
                c.err(entry, f"{where}.interface", f"{plain(name)}: no such network interface on this host "
                      f"(it has: {host.some_interfaces()}; {ELSEWHERE})")
        _check_address(c, entry, f"{where}.address", entry.get("address"), host)
    for key, port in LISTEN_PORTS.items():
        values = listen.get(key)
        for value in values if isinstance(values, list) else [values] if values is not None else []:
            try:
                hp = HostPort.parse(str(value), default_port=port)
            except ValueError:
                continue  # already an error
            _check_address(c, listen, f"listen.{key}", hp.host, host, key in FLOATING_KEYS)


def _check_address(c: Checker, where: LineMap, key: str, text: Any, host: HostNetwork,
                   may_float: bool = False) -> None:
    try:
        address = ipaddress.ip_address(str(text).split("%")[0])  # fe80::1%eth0: the scope is not the address
    except ValueError:
        return  # a host name (resolved when bound) or already an error
    if address.is_unspecified or host.owns(address):
        return
    if may_float and address.version in host.nonlocal_bind:
        c.warn(where, key, f"{address} is not an address of this host yet; listening on it anyway "
                           f"(net.ipv{address.version}.ip_nonlocal_bind = 1): a floating address")
    else:
        floating = f"; a floating address: net.ipv{address.version}.ip_nonlocal_bind = 1" if may_float else ""
        c.err(where, key, f"{address} is not an address of this host (it has: {host.some_addresses()}; "
                          f"{ELSEWHERE}{floating})")
