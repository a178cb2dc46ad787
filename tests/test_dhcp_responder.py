"""The DHCP decisions without sockets: DORA for known and unknown machines,
PXE and iPXE boot options, INIT-REBOOT, NAK, DECLINE, RELEASE, relays,
proxy mode."""

from __future__ import annotations

import ipaddress
import logging

from scapy.layers.dhcp import BOOTP, DHCP

from bootsvc.dhcp.leases import LeaseStore
from bootsvc.dhcp.message import IPv4, MessageType, Option, Request, decode, encode
from bootsvc.dhcp.responder import (UNANSWERED_BURST, UNANSWERED_RATE, BootOptions, Machines, Mode, Responder, Subnet,
                                    UnknownPolicy)
from bootsvc.events import Bus, Event, Kind
from bootsvc.inventory import Machine

NODE = Machine(mac="52:54:00:77:00:01", hostname="node01", profile="demo-linux",
               initiator_iqn="iqn.2026-11.t:node01", target_iqn="iqn.2026-11.t:boot.node01", ip=IPv4("10.77.0.11"))
SUBNET = Subnet(ipaddress.IPv4Network("10.77.0.0/24"), IPv4("10.77.0.1"), IPv4("10.77.0.100"),
                IPv4("10.77.0.101"), router=IPv4("10.77.0.1"), dns=(IPv4("10.77.0.1"),), domain="lab")


def planner(req: Request, machine: Machine | None, server: IPv4) -> BootOptions | None:
    if req.ipxe and machine is not None:
        return BootOptions(root_path=f"iscsi:{server}::3260::{machine.target_iqn}",
                           initiator_iqn=machine.initiator_iqn, ipxe_no_pxedhcp=True)
    return BootOptions(bootfile="undionly.kpxe" if req.arch == 0 else "ipxe.efi", next_server=server)


def responder(**kw: object) -> Responder:
    return Responder([SUBNET], Machines({NODE.mac: NODE}), LeaseStore(":memory:"), planner,
                     **kw)  # type: ignore[arg-type]


def req(msg: str, mac: str = NODE.mac, *opts: object, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0") -> Request:
    pkt = BOOTP(op=1, xid=7, ciaddr=ciaddr, giaddr=giaddr, chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10))
    return decode(bytes(pkt / DHCP(options=[("message-type", msg), *opts, "end"])))


def options(reply: object) -> dict[object, object]:
    pkt = BOOTP(encode(reply))  # type: ignore[arg-type]
    return {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}


PXE = ((93, b"\x00\x00"), ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"))
IPXE = (*PXE, ("user_class", b"iPXE"))


def test_known_machine_pxe_then_ipxe() -> None:
    r = responder()
    offer = r.handle(req("discover", NODE.mac, *PXE), IPv4("10.77.0.1"), 0)
    assert offer is not None and offer.msg_type is MessageType.OFFER and offer.yiaddr == NODE.ip
    o = options(offer)
    assert offer.bootfile == "undionly.kpxe" and offer.siaddr == SUBNET.server and o["vendor_class_id"] == b"PXEClient"
    # PXE_DISCOVERY_CONTROL "use this boot file": else UEFI PXE asks port 4011 (a BINL offer)
    assert o["vendor_specific"] == bytes([6, 1, 8, 255])
    ack = r.handle(req("request", NODE.mac, *IPXE, ("requested_addr", "10.77.0.11"), ("server_id", "10.77.0.1")),
                   IPv4("10.77.0.1"), 1)
    assert ack is not None and ack.msg_type is MessageType.ACK
    o = options(ack)
    assert o["root_disk_path"] == b"iscsi:10.77.0.1::3260::iqn.2026-11.t:boot.node01"
    assert o[203] == b"iqn.2026-11.t:node01" and o[175] == bytes([176, 1, 1]) and o["hostname"] == b"node01"
    assert o["lease_time"] == 3600 and o["router"] == "10.77.0.1"


def test_unknown_machines_by_policy_and_dynamic_pool() -> None:
    stranger = "52:54:00:99:00:01"
    assert responder().handle(req("discover", stranger), IPv4("10.77.0.1"), 0) is None
    r = responder(unknown=UnknownPolicy.DISCOVER)
    offer = r.handle(req("discover", stranger, *PXE), IPv4("10.77.0.1"), 0)
    assert offer is not None and offer.yiaddr == IPv4("10.77.0.100") and not offer.bootfile  # address only
    assert stranger in r.discovered
    ack = r.handle(req("request", stranger, ("requested_addr", "10.77.0.100"), ("server_id", "10.77.0.1")),
                   IPv4("10.77.0.1"), 1)
    assert ack is not None and ack.yiaddr == IPv4("10.77.0.100")
    second = r.handle(req("discover", "52:54:00:99:00:02"), IPv4("10.77.0.1"), 2)
    assert second is not None and second.yiaddr == IPv4("10.77.0.101")
    assert r.handle(req("discover", "52:54:00:99:00:03"), IPv4("10.77.0.1"), 3) is None  # pool exhausted
    assert r.counters["dropped_no_address"] == 1
    # RELEASE frees the address, DECLINE takes one out of the pool
    r.handle(req("release", stranger, ciaddr="10.77.0.100"), IPv4("10.77.0.1"), 4)
    again = r.handle(req("discover", "52:54:00:99:00:03"), IPv4("10.77.0.1"), 5)
    assert again is not None and again.yiaddr == IPv4("10.77.0.100")
    r.handle(req("decline", "52:54:00:99:00:03", ("requested_addr", "10.77.0.100")), IPv4("10.77.0.1"), 6)
    assert r.handle(req("discover", "52:54:00:99:00:04"), IPv4("10.77.0.1"), 7) is None


def test_nak_silence_other_server_and_relay() -> None:
    r = responder()
    nak = r.handle(req("request", NODE.mac, ("requested_addr", "10.77.0.50")), IPv4("10.77.0.1"), 0)
    assert nak is not None and nak.msg_type is MessageType.NAK
    stranger = responder(unknown=UnknownPolicy.DISCOVER)
    assert stranger.handle(req("request", "52:54:00:99:00:01", ("requested_addr", "10.77.0.150")),
                           IPv4("10.77.0.1"), 0) is None  # INIT-REBOOT we know nothing of
    assert r.handle(req("request", NODE.mac, ("requested_addr", "10.77.0.11"), ("server_id", "10.77.0.9")),
                    IPv4("10.77.0.1"), 0) is None
    relayed = r.handle(req("discover", NODE.mac, giaddr="10.77.0.254"), None, 0)
    assert relayed is not None and relayed.yiaddr == NODE.ip
    assert r.handle(req("discover", NODE.mac, giaddr="192.0.2.1"), None, 0) is None  # no such subnet


def test_inform_and_proxy_mode() -> None:
    r = responder()
    ack = r.handle(req("inform", NODE.mac, ciaddr="10.77.0.11"), IPv4("10.77.0.1"), 0)
    assert ack is not None and ack.msg_type is MessageType.ACK and "lease_time" not in options(ack)
    proxy = responder(mode=Mode.PROXY)
    assert proxy.handle(req("discover", NODE.mac), IPv4("10.77.0.1"), 0) is None  # not PXE: not ours
    offer = proxy.handle(req("discover", NODE.mac, *PXE), IPv4("10.77.0.1"), 0)
    assert offer is not None and str(offer.yiaddr) == "0.0.0.0" and offer.bootfile == "undionly.kpxe"
    assert Option.LEASE_TIME not in [code for code, _ in offer.options]


def test_unknown_machine_adopted_with_the_default_profile() -> None:
    """The responder asks for an adoption once a minute per MAC (the
    caller makes the machine off the loop), then answers it like a known one."""
    bus = Bus(clock=lambda: 0.0)
    events: list[Event] = []
    bus.subscribe(events.append)
    known: dict[str, Machine] = {NODE.mac: NODE}
    r = Responder([SUBNET], Machines(known), LeaseStore(":memory:"), planner, unknown=UnknownPolicy.DEFAULT,
                  emit=bus.emit)
    mac = "52:54:00:99:00:05"
    discover = req("discover", mac, *PXE)
    assert r.wants_adoption(discover, 0) and not r.wants_adoption(discover, 1)  # once a minute
    known[mac] = Machine(mac, "pxe-525400990005", "default", "iqn.2026-11.t:x", "iqn.2026-11.t:boot.x")
    assert not r.wants_adoption(discover, 70)  # known now
    offer = r.handle(discover, IPv4("10.77.0.1"), 0)
    assert offer is not None and offer.bootfile  # boots like a known machine
    assert options(offer).get("hostname") == b"pxe-525400990005"
    other = req("discover", "52:54:00:99:00:06", *PXE)
    assert r.wants_adoption(other, 0)
    r.handle(other, IPv4("10.77.0.1"), 0)  # no machine could be made: recorded like discover
    assert [e.kind for e in events[-2:]] == [Kind.DHCP_DISCOVERED, Kind.DHCP_OFFER]


def said(machine: Machine = NODE) -> tuple[Responder, list[Event]]:
    """A responder knowing ``machine``, and the events it emits."""
    bus = Bus(clock=lambda: 0.0)
    events: list[Event] = []
    bus.subscribe(events.append)
    return Responder([SUBNET], Machines({machine.mac: machine}), LeaseStore(":memory:"), planner,
                     emit=bus.emit), events


def test_unanswered_unknown_machine_is_said_once_a_minute_per_mac() -> None:
    """unknown_machines: ignore: the operator sees the MAC (INFO, not the
    DEBUG of a client's own doing), once a minute however often it asks."""
    r, events = said()
    stranger = "52:54:00:99:00:07"
    for t in (0, 5, 30, 61):
        assert r.handle(req("discover", stranger), IPv4("10.77.0.1"), t) is None
    assert [(e.kind, e.mac, e.fields["why"], e.fields["message"]) for e in events] == \
        [(Kind.DHCP_UNANSWERED, stranger, "unknown_machine", "discover")] * 2
    assert events[0].level == logging.INFO and "held_back" not in events[0].fields
    assert r.counters["dropped_unknown_machine"] == 4


def test_unanswered_fixed_ip_outside_the_subnet() -> None:
    """A machine whose fixed IP is on no subnet it asks from gets no offer;
    the event names the IP, the machine and the subnet it asked from."""
    elsewhere = Machine(mac="52:54:00:77:00:09", hostname="node09", profile="demo-linux",
                        initiator_iqn="iqn.2026-11.t:node09", target_iqn="iqn.2026-11.t:boot.node09",
                        ip=IPv4("192.0.2.9"))
    r, events = said(elsewhere)
    for t in (0, 4, 12):
        assert r.handle(req("discover", elsewhere.mac, *PXE), IPv4("10.77.0.1"), t) is None
    (e,) = events
    assert e.kind is Kind.DHCP_UNANSWERED and e.fields["why"] == "fixed_ip_outside_subnet"
    assert (e.mac, e.ip, e.hostname, str(e.fields["subnet"])) == (elsewhere.mac, "192.0.2.9", "node09",
                                                                   "10.77.0.0/24")
    assert r.counters["dropped_fixed_ip_outside_subnet"] == 3 and r.counters["dropped_no_address"] == 0


def test_a_clients_own_drops_stay_debug() -> None:
    """A flood over the rate is the client's doing: dhcp.dropped (NOISE)."""
    r, events = said()
    for i in range(40):
        r.handle(req("discover", NODE.mac, *PXE), IPv4("10.77.0.1"), i * 0.1)
    (dropped,) = [e for e in events if e.kind is not Kind.DHCP_OFFER]
    assert dropped.kind is Kind.DHCP_DROPPED and dropped.fields["why"] == "rate_limited"
    assert dropped.level == logging.DEBUG


def test_a_storm_of_unknown_macs_is_bounded_over_all_macs() -> None:
    """Made-up MACs each get their first request said; past a burst of
    UNANSWERED_BURST the INFO events come at UNANSWERED_RATE a second, the
    rest are DEBUG dhcp.dropped, and the next INFO one says how many."""
    r, events = said()
    for i in range(1000):  # 100 new MACs a second for 10 s
        r.handle(req("discover", f"52:54:02:00:{i >> 8 & 255:02x}:{i & 255:02x}"), IPv4("10.77.0.1"), i * 0.01)
    unanswered = [e for e in events if e.kind is Kind.DHCP_UNANSWERED]
    assert UNANSWERED_BURST <= len(unanswered) <= UNANSWERED_BURST + 10 * UNANSWERED_RATE + 1
    assert len(events) == 1000 and all(e.kind is Kind.DHCP_DROPPED for e in events if e not in unanswered)
    held = [e.fields["held_back"] for e in unanswered if "held_back" in e.fields]
    assert held and sum(held) == 1000 - len(unanswered) - r.unanswered.held  # type: ignore[arg-type]


def test_lease_writes_wait_for_the_adapter_to_commit(tmp_path: object) -> None:
    """The responder decides without I/O: a bound lease is a write the
    adapter commits (before it sends the ACK), not a write inside handle."""
    r = responder(unknown=UnknownPolicy.DISCOVER)
    stranger = "52:54:00:99:00:08"
    offer = r.handle(req("discover", stranger), IPv4("10.77.0.1"), 0)
    # an offer lives in memory only; the stranger seen is a write, with the next group
    assert offer is not None and [s.name for s, _ in r.leases.unwritten] == ["seen"]
    assert r.leases.unwritten[0][1][:2] == (stranger, "discover")
    ack = r.handle(req("request", stranger, ("requested_addr", str(offer.yiaddr)), ("server_id", "10.77.0.1")),
                   IPv4("10.77.0.1"), 1)
    assert ack is not None and [s.name for s, _ in r.leases.unwritten] == ["seen", "put"]
    assert list(r.leases.db.execute("SELECT mac FROM leases")) == []
    r.leases.commit()
    assert list(r.leases.db.execute("SELECT mac FROM leases")) == [(stranger,)] and not r.leases.unwritten
    assert [u[0] for u in r.leases.unknown_machines()] == [stranger]


def test_a_mac_that_floods_is_answered_no_more_until_its_window_passes() -> None:
    r = responder()
    answered = [r.handle(req("discover", NODE.mac, *PXE), IPv4("10.77.0.1"), i * 0.1) is not None
                for i in range(40)]  # 40 requests in 4 s
    assert answered == [True] * 30 + [False] * 10 and r.counters["dropped_rate_limited"] == 10
    assert r.handle(req("discover", NODE.mac, *PXE), IPv4("10.77.0.1"), 15.0) is not None  # a new window


def test_per_mac_tables_stay_bounded_under_random_macs() -> None:
    r = responder(unknown=UnknownPolicy.DISCOVER)
    for i in range(20000):
        r.handle(req("discover", f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"),
                 IPv4("10.77.0.1"), i * 0.01)  # 100 new MACs a second for 200 s
    assert len(r.rates) <= 8193 and len(r.discovered) <= 8193 and len(r.dropped) <= 8193
