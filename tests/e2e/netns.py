"""Network namespaces the tests create and delete themselves: every packet
a test sends stays inside them (DEVELOPERS.md network rules)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from bootsvc.vm.network import ip  # the one way bootsvc and the tests run ip(8)


@dataclass(frozen=True)
class Link:
    """One end of a veth pair inside a namespace."""

    ns: str
    dev: str

    def run(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True,
                              **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[list[str]]:
    """Namespaces named ``bsv-<name>-<pid>``, loopback up; deleted (with every
    veth in them) on exit."""
    made = [f"bsv-{n}-{os.getpid()}" for n in names]
    try:
        for ns in made:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        yield made
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def veth(a_ns: str, a_dev: str, b_ns: str, b_dev: str, b_mac: str | None = None,
         a_addr: str | None = None) -> tuple[Link, Link]:
    """A veth pair between two namespaces, both ends up."""
    ip("link", "add", a_dev, "netns", a_ns, "type", "veth", "peer", "name", b_dev, "netns", b_ns)
    if b_mac:
        ip("-n", b_ns, "link", "set", b_dev, "address", b_mac)
    if a_addr:
        ip("-n", a_ns, "addr", "add", a_addr, "dev", a_dev)
    ip("-n", a_ns, "link", "set", a_dev, "up")
    ip("-n", b_ns, "link", "set", b_dev, "up")
    return Link(a_ns, a_dev), Link(b_ns, b_dev)


def can_make_namespaces() -> str | None:
    """None when this machine lets the tests make namespaces, else why not."""
    probe = f"bsv-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def boot_bridge(ns: str, other: str, net: str) -> None:
    """A bridge bsv-br0 in ``ns`` (bootsvc's side, ``net``.1/24) with a VM's
    tap bsv-tap0, and a veth to ``other`` (``net``.2: another DHCP server,
    as dnsmasq beside a proxy)."""
    ip("-n", ns, "link", "add", "bsv-br0", "type", "bridge")
    ip("-n", ns, "addr", "add", f"{net}.1/24", "dev", "bsv-br0")
    ip("-n", ns, "link", "set", "bsv-br0", "up")
    ip("-n", ns, "tuntap", "add", "dev", "bsv-tap0", "mode", "tap")
    ip("-n", ns, "link", "set", "bsv-tap0", "master", "bsv-br0")
    ip("-n", ns, "link", "set", "bsv-tap0", "up")
    ip("link", "add", "bsv-up0", "netns", ns, "type", "veth", "peer", "name", "bsv-dh0", "netns", other)
    ip("-n", ns, "link", "set", "bsv-up0", "master", "bsv-br0")
    ip("-n", ns, "link", "set", "bsv-up0", "up")
    ip("-n", other, "addr", "add", f"{net}.2/24", "dev", "bsv-dh0")
    ip("-n", other, "link", "set", "bsv-dh0", "up")
