"""The private boot network of ``bootsvc vm``: a network namespace holding
a bridge with bootsvc's address and one tap device per VM, so no packet
leaves the machine; deleting the namespace deletes every device in it.
Attached to a running bootsvc instead, the bridge is the caller's and only
the taps are made (and removed) here."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field


class NetworkError(Exception):
    """The boot network could not be set up; the message says why."""


def ip(*args: str) -> None:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise NetworkError("ip (iproute2) is not installed") from e
    if r.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class BootNetwork:
    bridge: str
    ns: str | None  # None: the bridge is in our own namespace (attach mode)
    taps: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> tuple[str, ...]:
        """Runs a command inside the boot network."""
        return ("ip", "netns", "exec", self.ns) if self.ns else ()

    def _ip(self, *args: str) -> None:
        ip(*(("-n", self.ns) if self.ns else ()), *args)

    def add_tap(self) -> str:
        # names carry our PID: two `bootsvc vm` runs never collide
        tap = f"bsvt{os.getpid() % 100000}.{len(self.taps)}"
        self._ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.taps.append(tap)
        self._ip("link", "set", tap, "master", self.bridge)
        self._ip("link", "set", tap, "up")
        return tap

    def close(self) -> None:
        if self.ns:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        else:
            for tap in self.taps:
                subprocess.run(["ip", "link", "del", tap], capture_output=True, timeout=30)
        self.taps.clear()


def private(bridge: str, address: ipaddress.IPv4Interface) -> BootNetwork:
    """A new namespace ``bsv-vm-<pid>`` with ``bridge`` holding ``address``."""
    ns = f"bsv-vm-{os.getpid()}"
    ip("netns", "add", ns)
    net = BootNetwork(bridge, ns)
    try:
        net._ip("link", "set", "lo", "up")
        net._ip("link", "add", bridge, "type", "bridge")
        net._ip("addr", "add", str(address), "dev", bridge)
        net._ip("link", "set", bridge, "up")
    except NetworkError:
        net.close()
        raise
    return net


def attached(bridge: str) -> BootNetwork:
    """The caller's existing ``bridge`` in this namespace."""
    if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        raise NetworkError(f"{bridge} is not a bridge in this network namespace: "
                           "--attach needs the bridge the running bootsvc serves DHCP on")
    return BootNetwork(bridge, None)
