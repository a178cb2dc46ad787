"""What one iSNS client may cost the server, without sockets: the bounds
(:class:`Limits`), who may act as a control node from where
(:class:`ControlAddresses`), who holds TCP connections
(:class:`Connections`), the half-joined UDP messages of every sender
(:class:`UdpJoins`) and how often a refusal is told (:class:`Gate`).

RFC 4171 sets none of these numbers; §5.4 only says a message may span
PDUs, which is what a peer can abuse by never sending the last one.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from .codec import Header, Message, Reassembler

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Limits:
    """The server's bounds; tests pass small ones."""

    idle_timeout: float = 60.0  # s a TCP connection may stay silent (unless an entity's SCNs use it)
    connections: int = 256  # TCP connections open at once
    connections_per_host: int = 16  # of them from one address
    open_messages: int = 4  # messages begun and not ended, per connection and per UDP sender
    message_bytes: int = 1 << 20  # their bytes together, per connection and per UDP sender
    reassembly_timeout: float = 30.0  # s from a message's first PDU to its last
    tcp_bytes: int = 32 << 20  # bytes of messages begun over all TCP connections together
    udp_senders: int = 1024  # UDP senders with a message begun
    udp_bytes: int = 8 << 20  # their bytes together

    def reassembler(self) -> Reassembler:
        return Reassembler(self.message_bytes, self.open_messages, self.reassembly_timeout)


LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as the registry weighs it: ``host`` the
    peer's address (None: a direct call, no socket), ``control`` whether a
    configured control node's name is believed from there."""

    host: str | None = None
    control: bool = True


DIRECT = Origin()  # Registry.handle called without a socket: tests, the replay, tools


class ControlAddresses:
    """Control-node rights come with an address, not a name alone: a
    request naming a control node is believed from these networks
    (default loopback) and from the server's own address (bootsvc's
    registration client reaching its own server on a LAN address)."""

    def __init__(self, networks: Iterable[str | Network] = LOOPBACK) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
                              for n in networks)
        self.origin = lru_cache(maxsize=4096)(self._origin)  # a UDP sender is weighed once, not per datagram

    def _origin(self, host: str, local: str | None = None) -> Origin:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return Origin(host, False)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return Origin(str(ip), host == local or any(ip in n for n in self.networks))


@dataclass
class Connections:
    """TCP connections held, in all and per address."""

    limits: Limits
    per_host: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; or why it is refused."""
        if self.total >= self.limits.connections:
            return f"{self.total} connections open"
        if self.per_host[host] >= self.limits.connections_per_host:
            return f"{self.per_host[host]} connections open from {host}"
        self.total += 1
        self.per_host[host] += 1
        return None

    def release(self, host: str) -> None:
        self.total -= 1
        self.per_host[host] -= 1
        if not self.per_host[host]:
            del self.per_host[host]


class UdpJoins:
    """The half-joined messages of every UDP sender (§5.4): each sender's
    bounded as a connection's, and all senders' together to ``udp_senders``
    and ``udp_bytes``, the least recently heard sender dropped first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.senders: dict[object, Reassembler] = {}  # in the order they were last heard
        self.held = 0  # bytes held by all senders

    def feed(self, sender: object, header: Header, payload: bytes, now: float) -> Message | None:
        joined = self.senders.pop(sender, None)
        if joined is None:
            joined = self.limits.reassembler()
        before = joined.held
        try:
            msg = joined.feed(header, payload, now)
        finally:
            self.held += joined.held - before
            if joined.open:
                self.senders[sender] = joined  # last in order: heard last
            self._cut()
        return msg

    def _cut(self) -> None:
        while self.senders and (len(self.senders) > self.limits.udp_senders or self.held > self.limits.udp_bytes):
            self.forget(next(iter(self.senders)))

    def forget(self, sender: object) -> None:
        """Drop what ``sender`` began (after a PDU of its that was refused)."""
        joined = self.senders.pop(sender, None)
        if joined is not None:
            self.held -= joined.held

    def expire(self, now: float) -> int:
        """Drop the messages older than the reassembly timeout; how many."""
        dropped = 0
        for sender, joined in list(self.senders.items()):
            before = joined.held
            dropped += joined.expire(now)
            self.held += joined.held - before
            if not joined.open:
                del self.senders[sender]
        return dropped


@dataclass
class Gate:
    """At most one event per reason every ``interval`` seconds: a client
    that hits a bound at will must not flood the log. ``pass_(why, now)``
    is None while quiet, else how many were held back since the last."""

    interval: float = 1.0
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)

    def pass_(self, why: str, now: float) -> int | None:
        last, held = self._last.get(why, (-math.inf, 0))
        if now - last < self.interval:
            self._last[why] = (last, held + 1)
            return None
        if len(self._last) > 256:
            self._last.clear()  # reasons carry addresses: keep the table small
        self._last[why] = (now, 0)
        return held
