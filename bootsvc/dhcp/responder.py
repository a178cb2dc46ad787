"""What bootsvc answers to a DHCP request (RFC 2131 §4.3), without sockets
or clocks: ``Responder.handle(request, received_on, now)`` returns the reply
to send, or None with the reason counted.

Authoritative mode hands out addresses (a machine's fixed IP, else its
previous lease, else the first free one of the range) with the boot options
of PXE/iPXE clients; proxy mode (PXE spec §2.2.5, "proxyDHCP") answers only
PXE clients, with boot options and no address, beside another DHCP server.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar

from ..events import Emit, Kind, no_events
from ..inventory import Machine
from .leases import Lease, LeaseState, LeaseStore
from .message import ANY, IPv4, MessageType, Option, OptionValue, Reply, Request, option_bytes

# PXE 2.1 §2.4.6 vendor option 43: PXE_DISCOVERY_CONTROL (6) = bit 3, "the
# boot file in this offer is the one: no boot server discovery". Without
# it a UEFI PXE client (EDK2/OVMF) treats a "PXEClient" offer as a BINL
# offer, asks port 4011 for its boot file and, with no answer there, says
# "No valid offer received".
PXE_USE_BOOTFILE = bytes([6, 1, 0x08, 255])
HTTP_CLIENT = "HTTPClient"  # option 60 of a UEFI HTTP-boot client, echoed in our answer
OFFER_HOLD = 60.0  # seconds an offered address waits for the client's REQUEST
SEEN_INTERVAL = 60.0  # seconds between reports of the same unknown machine or dropped client
RATE_WINDOW = 10.0  # seconds over which a MAC's requests are counted
RATE_MAX = 30  # requests a MAC may make in RATE_WINDOW (a PXE ROM then iPXE make 4-8, retries a few more)
TRACKED = 8192  # MACs the per-MAC tables hold before the stale entries are let go
# Why a request gets no answer because of the config rather than the client:
# the operator is told (dhcp.unanswered, INFO) once a minute per MAC; every
# other reason (a flood, another server's client) stays dhcp.dropped, DEBUG.
UNANSWERED = frozenset({"unknown_machine", "fixed_ip_outside_subnet"})
UNANSWERED_BURST = 60  # dhcp.unanswered said at once (a rack of unknown machines powered on together)
UNANSWERED_RATE = 1.0  # and a second after that: a storm of made-up MACs is one line a second


class Mode(str, Enum):
    AUTHORITATIVE = "authoritative"
    PROXY = "proxy"


class UnknownPolicy(str, Enum):
    IGNORE = "ignore"  # machines not in the inventory get no answer
    DEFAULT = "default"  # they boot the default profile
    DISCOVER = "discover"  # they get an address only, and are recorded for the operator


@dataclass(frozen=True)
class Subnet:
    network: ipaddress.IPv4Network
    server: IPv4  # bootsvc's address on it (server identifier, next-server)
    first: IPv4 | None = None  # dynamic range; None: reservations only
    last: IPv4 | None = None
    router: IPv4 | None = None
    dns: tuple[IPv4, ...] = ()
    domain: str = ""
    lease_time: int = 3600


@dataclass(frozen=True)
class BootOptions:
    """What a PXE ROM or iPXE gets (bootsvc/boot.py decides)."""

    bootfile: str = ""
    next_server: IPv4 | None = None
    root_path: str = ""  # option 17, for iPXE
    initiator_iqn: str = ""  # option 203, for iPXE (and the iBFT it writes)
    ipxe_no_pxedhcp: bool = False  # 175.176 = 1: iPXE need not wait for proxyDHCP offers


V = TypeVar("V")
Options = list[tuple[int, bytes]]  # (code, value) as Reply.options holds them


@dataclass
class Budget:
    """A token bucket over all MACs: ``take(now)`` says whether one more
    event may be said, ``burst`` at once and ``rate`` a second after;
    ``held`` counts the ones it refused since the last it allowed."""

    burst: float = UNANSWERED_BURST
    rate: float = UNANSWERED_RATE
    tokens: float = UNANSWERED_BURST
    last: float | None = None
    held: int = 0

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.held += 1
            return False
        self.tokens -= 1
        return True
BootPlanner = Callable[[Request, "Machine | None", IPv4], "BootOptions | None"]


class Directory(Protocol):
    """What the responder asks about machines (bootsvc/fleet.py answers)."""

    def machine(self, mac: str) -> Machine | None: ...

    def reserved_ips(self) -> Container[IPv4]:
        """Addresses no new client may have though no lease holds them."""
        ...


@dataclass
class Machines:
    """A fixed set of machines as a :class:`Directory` (tests, tools)."""

    by_mac: Mapping[str, Machine]

    def machine(self, mac: str) -> Machine | None:
        return self.by_mac.get(mac)

    def reserved_ips(self) -> frozenset[IPv4]:
        return frozenset(m.ip for m in self.by_mac.values() if m.ip is not None)


@dataclass
class Responder:
    subnets: list[Subnet]
    machines: Directory
    leases: LeaseStore
    boot: BootPlanner
    mode: Mode = Mode.AUTHORITATIVE
    unknown: UnknownPolicy = UnknownPolicy.IGNORE
    emit: Emit = no_events
    counters: Counter[str] = field(default_factory=Counter)
    discovered: dict[str, float] = field(default_factory=dict)  # MAC -> last reported
    dropped: dict[str, float] = field(default_factory=dict)  # MAC -> last dhcp.dropped or unanswered event
    unanswered: Budget = field(default_factory=Budget)  # dhcp.unanswered events over all MACs
    adoptions: dict[str, float] = field(default_factory=dict)  # MAC -> last adoption asked for
    rates: dict[str, tuple[float, int]] = field(default_factory=dict)  # MAC -> (window start, requests in it)
    _now: float = 0.0
    # made once instead of per packet; emptied when the subnets change
    _subnet_of: dict[IPv4, Subnet | None] = field(default_factory=dict)  # address -> its subnet
    _subnet_options: dict[tuple[int, bool], tuple[Options, Options]] = field(default_factory=dict)

    def retune(self, subnets: list[Subnet], unknown: UnknownPolicy) -> None:
        """A reload changed the subnets or the unknown-machine policy."""
        self.subnets = subnets
        self.unknown = unknown
        self._subnet_of.clear()
        self._subnet_options.clear()

    def wants_adoption(self, req: Request, now: float) -> bool:
        """unknown_machines: default and a MAC the fleet does not know: the
        caller adopts it (off the loop) and then asks ``handle``. At most
        once a minute per MAC, so a MAC whose disk cannot be made does not
        make the server try again at every retransmission."""
        if self.unknown is not UnknownPolicy.DEFAULT or self.machines.machine(req.mac) is not None:
            return False
        last = self.adoptions.get(req.mac)
        if last is not None and now - last <= SEEN_INTERVAL:
            return False
        _remember(self.adoptions, req.mac, now, lambda t: now - t > SEEN_INTERVAL)
        return True

    def _drop(self, why: str, req: Request | None = None, machine: Machine | None = None,
              **fields: object) -> None:
        """No answer: counted, and said once a minute per MAC (a client
        retransmits every few seconds). Config reasons (UNANSWERED) are
        dhcp.unanswered while the budget over all MACs lasts, with how many
        it held back; past it they are dhcp.dropped like the others."""
        self.counters[f"dropped_{why}"] += 1
        if req is None:
            return
        last = self.dropped.get(req.mac)
        if last is not None and self._now - last <= SEEN_INTERVAL:
            return
        _remember(self.dropped, req.mac, self._now, lambda t: self._now - t > SEEN_INTERVAL)
        kind = Kind.DHCP_DROPPED
        if why in UNANSWERED and self.unanswered.take(self._now):
            kind = Kind.DHCP_UNANSWERED
            fields["held_back"] = self.unanswered.held or None  # None: left out of the event
            self.unanswered.held = 0
        self.emit(kind, mac=req.mac, ip=machine.ip if machine else None,
                  hostname=machine.hostname if machine else None, why=why, message=req.msg_type.name.lower(),
                  **fields)

    def subnet_for(self, req: Request, received_on: IPv4 | None) -> Subnet | None:
        """The client's subnet (RFC 2131 §4.3.1): the relay's, else the
        address the client already has, else the interface's."""
        for probe in (req.giaddr if req.giaddr != ANY else None, req.ciaddr if req.ciaddr != ANY else None,
                      received_on):
            if probe is None:
                continue
            try:
                found = self._subnet_of[probe]
            except KeyError:
                found = next((s for s in self.subnets if probe in s.network), None)
                _remember(self._subnet_of, probe, found, lambda s: True)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    def _flooding(self, mac: str, now: float) -> bool:
        """Whether ``mac`` made more than RATE_MAX requests in RATE_WINDOW:
        a client gone wild (or spoofing a machine's MAC) gets no more
        answers until its window passes, and costs no disk work."""
        start, count = self.rates.get(mac, (now, 0))
        if now - start > RATE_WINDOW:
            start, count = now, 0
        _remember(self.rates, mac, (start, count + 1), lambda v: now - v[0] > RATE_WINDOW)
        return count + 1 > RATE_MAX

    def handle(self, req: Request, received_on: IPv4 | None, now: float) -> Reply | None:
        self._now = now
        if self._flooding(req.mac, now):
            return self._drop("rate_limited", req)
        machine = self.machines.machine(req.mac)
        if machine is None:
            if self.unknown is UnknownPolicy.IGNORE:
                return self._drop("unknown_machine", req)
            last = self.discovered.get(req.mac)
            if last is None or now - last > SEEN_INTERVAL:
                # policy discover, or default with no disk for it: recorded for the
                # operator, here, so it joins this exchange's lease group (in a
                # worker process, not a round trip through serve's fleet)
                self.leases.saw_unknown(req.mac, "discover", now, "" if req.arch is None else str(req.arch))
                self.emit(Kind.DHCP_DISCOVERED, mac=req.mac, arch=req.arch)
                _remember(self.discovered, req.mac, now, lambda t: now - t > SEEN_INTERVAL)
        subnet = self.subnet_for(req, received_on)
        if subnet is None:
            return self._drop("no_subnet", req)
        if self.mode is Mode.PROXY:
            return self._proxy(req, machine, subnet)
        match req.msg_type:
            case MessageType.DISCOVER:
                return self._discover(req, machine, subnet, now)
            case MessageType.REQUEST:
                return self._request(req, machine, subnet, now)
            case MessageType.INFORM:
                reply = Reply(req, MessageType.ACK, subnet.server)
                self._options(reply, req, machine, subnet, lease_time=False)
                return reply
            case MessageType.DECLINE:
                self._decline(req, subnet, now)
            case MessageType.RELEASE:
                lease = self.leases.for_mac(req.mac)
                if lease is not None and lease.ip == req.ciaddr:
                    self.leases.drop(lease)
                    self.emit(Kind.DHCP_RELEASE, mac=req.mac, ip=lease.ip)
        return None

    # -- authoritative --------------------------------------------------------------

    def _address_for(self, req: Request, machine: Machine | None, subnet: Subnet, now: float) -> IPv4 | None:
        if machine is not None and machine.ip is not None:
            return machine.ip if machine.ip in subnet.network else None  # outside: fixed_ip_outside_subnet
        lease = self.leases.for_mac(req.mac)
        if lease is not None and lease.ip in subnet.network and lease.state is not LeaseState.DECLINED:
            return lease.ip
        wanted = req.requested_ip
        reserved = self.machines.reserved_ips()
        if wanted is not None and wanted in subnet.network and wanted not in reserved \
                and self._in_pool(wanted, subnet) and self.leases.holder(wanted, now) is None:
            return wanted
        if subnet.first is None or subnet.last is None:
            return None
        return self.leases.free_address(subnet.first, subnet.last, now, reserved)

    @staticmethod
    def _in_pool(ip: IPv4, subnet: Subnet) -> bool:
        return subnet.first is not None and subnet.last is not None and subnet.first <= ip <= subnet.last

    def _discover(self, req: Request, machine: Machine | None, subnet: Subnet, now: float) -> Reply | None:
        ip = self._address_for(req, machine, subnet, now)
        if ip is None and machine is not None and machine.ip is not None:
            return self._drop("fixed_ip_outside_subnet", req, machine, subnet=subnet.network)
        if ip is None:
            return self._drop("no_address", req)
        if machine is None or machine.ip is None:
            self.leases.put(Lease(ip, req.mac, LeaseState.OFFERED, now + OFFER_HOLD, req.hostname))
        # the offer first: what the boot planner then refuses (no iPXE for its
        # firmware, no disk) belongs to the boot this offer starts
        self.emit(Kind.DHCP_OFFER, mac=req.mac, ip=ip, hostname=machine.hostname if machine else None,
                  ipxe=req.ipxe, firmware=req.firmware, arch=req.arch,
                  user_class=req.user_class.decode(errors="replace") or None)
        reply = Reply(req, MessageType.OFFER, subnet.server, yiaddr=ip)
        self._options(reply, req, machine, subnet)
        return reply

    def _nak(self, req: Request, subnet: Subnet, why: str) -> Reply:
        self.counters["nak"] += 1
        reply = Reply(req, MessageType.NAK, subnet.server)
        reply.add(Option.MESSAGE, why)
        self.emit(Kind.DHCP_NAK, mac=req.mac, why=why)
        return reply

    def _request(self, req: Request, machine: Machine | None, subnet: Subnet, now: float) -> Reply | None:
        if req.server_id is not None and req.server_id != subnet.server:
            # SELECTING another server's offer: ours is free again (RFC 2131 §4.3.2)
            lease = self.leases.for_mac(req.mac)
            if lease is not None and lease.state is LeaseState.OFFERED:
                self.leases.drop(lease)
            return self._drop("other_server")
        wanted = req.requested_ip or (req.ciaddr if req.ciaddr != ANY else None)
        if wanted is None:
            return self._drop("no_requested_address")
        ip = self._address_for(req, machine, subnet, now)
        if ip != wanted:
            if req.server_id is None and machine is None and self.leases.for_mac(req.mac) is None:
                # INIT-REBOOT or RENEWING a client we have no record of: stay silent (§4.3.2)
                return self._drop("not_ours")
            return self._nak(req, subnet, f"{wanted} is not yours")
        if machine is None or machine.ip is None:
            self.leases.put(Lease(ip, req.mac, LeaseState.BOUND, now + subnet.lease_time, req.hostname))
        reply = Reply(req, MessageType.ACK, subnet.server, yiaddr=ip)
        # dhcp.ack is said by the service once the ACK has left, after the
        # lease is durable: a failed write says dhcp.ack_withheld instead
        reply.said = {"mac": req.mac, "ip": ip, "hostname": machine.hostname if machine else req.hostname,
                      "ipxe": req.ipxe, "arch": req.arch, "user_class": req.user_class.decode(errors="replace") or None}
        self._options(reply, req, machine, subnet)
        return reply

    def _decline(self, req: Request, subnet: Subnet, now: float) -> None:
        ip = req.requested_ip
        lease = self.leases.for_mac(req.mac)
        if ip is None or lease is None or lease.ip != ip:
            return
        self.leases.drop(lease)
        self.leases.put(Lease(ip, "declined", LeaseState.DECLINED, now + subnet.lease_time))
        self.emit(Kind.DHCP_DECLINE, mac=req.mac, ip=ip)

    # -- options ------------------------------------------------------------------

    def _options(self, reply: Reply, req: Request, machine: Machine | None, subnet: Subnet,
                 lease_time: bool = True) -> None:
        head, tail = self._options_of(subnet, lease_time)
        reply.options.extend(head)
        if machine is not None:
            reply.add(Option.HOSTNAME, machine.hostname)
        reply.options.extend(tail)
        self._boot_options(reply, req, machine, subnet)

    def _options_of(self, subnet: Subnet, lease_time: bool) -> tuple[Options, Options]:
        """A subnet's options (RFC 2132 §3.3, §3.5, §3.8, §3.17, §9.2,
        §9.11, §9.12) encoded once: before the host name, and after it."""
        key = (id(subnet), lease_time)  # the cache is emptied when the subnets change
        cached = self._subnet_options.get(key)
        if cached is None:
            head: list[tuple[int, OptionValue]] = [(Option.SUBNET_MASK, subnet.network.netmask)]
            if subnet.router is not None:
                head.append((Option.ROUTER, subnet.router))
            if subnet.dns:
                head.append((Option.DNS, list(subnet.dns)))
            if subnet.domain:
                head.append((Option.DOMAIN, subnet.domain))
            tail: list[tuple[int, OptionValue]] = []
            if lease_time:
                tail = [(Option.LEASE_TIME, subnet.lease_time), (Option.RENEWAL_TIME, subnet.lease_time // 2),
                        (Option.REBINDING_TIME, subnet.lease_time * 7 // 8)]
            cached = self._subnet_options[key] = ([(c, option_bytes(v)) for c, v in head],
                                                  [(c, option_bytes(v)) for c, v in tail])
        return cached

    def _boot_options(self, reply: Reply, req: Request, machine: Machine | None, subnet: Subnet) -> None:
        if not req.firmware:
            return
        if machine is None and self.unknown is not UnknownPolicy.DEFAULT:
            return
        boot = self.boot(req, machine, subnet.server)
        if boot is None:
            return
        if req.pxe:
            reply.add(Option.VENDOR_CLASS, "PXEClient")
            if boot.bootfile:
                reply.add(Option.VENDOR_SPECIFIC, PXE_USE_BOOTFILE)
        elif req.http:
            # UEFI 2.10 §24.7.2 (EDK2 HttpBootDhcp4.c): an offer counts as
            # HTTP boot's only with option 60 "HTTPClient" and a URI in 67
            reply.add(Option.VENDOR_CLASS, HTTP_CLIENT)
        if boot.bootfile:
            reply.bootfile = boot.bootfile
            reply.add(Option.BOOTFILE, boot.bootfile)
        if boot.next_server is not None:
            reply.siaddr = boot.next_server
            reply.add(Option.TFTP_SERVER, str(boot.next_server))
        if boot.root_path:
            reply.add(Option.ROOT_PATH, boot.root_path)
        if boot.initiator_iqn:
            reply.add(Option.IPXE_INITIATOR_IQN, boot.initiator_iqn)
        if boot.ipxe_no_pxedhcp:
            reply.add(Option.IPXE_ENCAPSULATED, bytes([176, 1, 1]))

    # -- proxy --------------------------------------------------------------------

    def _proxy(self, req: Request, machine: Machine | None, subnet: Subnet) -> Reply | None:
        """proxyDHCP: PXE clients' DISCOVER gets an OFFER and their REQUEST
        (to port 67 or 4011) an ACK, with boot options only. A UEFI
        HTTP-boot client takes a proxy's OFFER (no address, HTTPClient and
        a URI: EDK2's "ProxyIpUri" offer) beside the DHCP server's and
        requests only from that server, so only its DISCOVER is answered."""
        if not req.firmware:
            return self._drop("proxy_not_pxe")
        if req.msg_type not in (MessageType.DISCOVER, MessageType.REQUEST, MessageType.INFORM):
            return None
        if req.http and not req.pxe and not req.ipxe and req.msg_type is not MessageType.DISCOVER:
            return self._drop("proxy_http_not_discover")
        kind = MessageType.OFFER if req.msg_type is MessageType.DISCOVER else MessageType.ACK
        reply = Reply(req, kind, subnet.server)
        self._boot_options(reply, req, machine, subnet)
        if not reply.bootfile and not any(code == Option.ROOT_PATH for code, _ in reply.options):
            return self._drop("proxy_nothing_to_boot", req)
        # the address another server gave the client (it asks from it, or is asking for it)
        held = req.ciaddr if req.ciaddr != ANY else req.requested_ip
        said: dict[str, object] = {"mac": req.mac, "ip": held, "hostname": machine.hostname if machine else None,
                                   "ipxe": req.ipxe, "firmware": req.firmware, "arch": req.arch,
                                   "user_class": req.user_class.decode(errors="replace") or None, "proxy": True}
        if kind is MessageType.ACK:
            reply.said = said  # an ACK leaves after the group commit: said then, as the address ACKs are
        else:
            self.emit(Kind.DHCP_OFFER, **said)  # type: ignore[arg-type]
        return reply


def _remember(table: dict[str, V], mac: str, value: V, stale: Callable[[V], bool]) -> None:
    """``table[mac] = value``, the table held to TRACKED MACs: past that the
    stale entries go, and if a storm of new MACs still overfills it, the
    oldest half (a dict keeps insertion order)."""
    table[mac] = value
    if len(table) <= TRACKED:
        return
    for key in [k for k, v in table.items() if stale(v)]:
        del table[key]
    if len(table) > TRACKED:
        for key in list(table)[:len(table) // 2]:
            del table[key]
