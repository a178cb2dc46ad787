"""The fleet, the one owner of machines, disks and targets: ephemeral
renewal on a boot ROM's offer event, adoption of unknown MACs off the
loop, and reload as a diff that keeps logged-in disks; qemu-img judges
the overlays."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootsvc.config import Config, load
from bootsvc.dhcp.leases import LeaseStore
from bootsvc.events import Bus, Event, Kind
from bootsvc.fleet import Fleet
from tests.qcow2_oracle import assert_check_clean

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
SIZE = 1 << 20
A, B, C = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def lab(tmp_path: Path, machines: str, overlay: str = "persistent", extra: str = "") -> Path:
    (tmp_path / "state" / "images").mkdir(parents=True, exist_ok=True)
    gold = tmp_path / "state" / "images" / "gold.raw"
    if not gold.exists():
        gold.write_bytes(os.urandom(SIZE))
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "p.yaml").write_text(f"base: gold.raw\noverlay: {overlay}\n")
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nprofiles_dir: profiles\ndefault_profile: p\n{extra}"
                   f"machines:\n{machines}")
    return cfg


def recorded(bus: Bus) -> list[Event]:
    events: list[Event] = []
    bus.subscribe(events.append)
    return events


def test_renewal_at_each_boot_waits_for_the_new_boots_login(tmp_path: Path) -> None:
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", "ephemeral")), bus)
    fleet.open()
    gold = (tmp_path / "state" / "images" / "gold.raw").read_bytes()

    async def settle(kind: Kind) -> None:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if any(e.kind is kind for e in events):
                return

    async def main() -> None:
        disk = fleet.disk(A)
        assert disk is not None
        lun = disk.target.luns[0]
        bus.emit(Kind.DHCP_OFFER, mac=A, ipxe=False, firmware=True)  # the first boot: the disk was made for it
        await asyncio.sleep(0.05)
        bus.emit(Kind.ISCSI_LOGIN, mac=A)
        lun.backend.write_sync(0, b"\x55" * 512)  # type: ignore[attr-defined]
        disk.target.sessions.add(object())  # type: ignore[arg-type]  # a reset machine never logged out
        bus.emit(Kind.DHCP_OFFER, mac=A, firmware=False)  # its OS's own DHCP client: no new boot
        await asyncio.sleep(0.05)
        assert disk.target.standby is None
        bus.emit(Kind.DHCP_OFFER, mac=A, ipxe=True, firmware=True)  # the next boot, the old session still open
        await settle(Kind.DISK_KEPT)
        assert disk.target.standby is not None
        assert lun.backend.read_sync(0, 512) == b"\x55" * 512  # type: ignore[attr-defined]  # not under a session
        bus.emit(Kind.DHCP_OFFER, mac=A, ipxe=True, firmware=True)  # iPXE chained: the same boot, no second disk
        await asyncio.sleep(0.05)
        disk.target.sessions.clear()
        disk.target.swap_standby()  # what the target does when the new boot's first session is admitted
        lun = disk.target.luns[0]
        assert lun.backend.read_sync(0, 512) == gold[:512]  # type: ignore[attr-defined]
        bus.emit(Kind.ISCSI_LOGIN, mac=A)
        lun.backend.write_sync(0, b"\x66" * 512)  # type: ignore[attr-defined]
        bus.emit(Kind.DHCP_OFFER, mac=A, firmware=True)  # a reboot after a logout: renewed at once
        for _ in range(200):
            await asyncio.sleep(0.01)
            if [e.kind for e in events].count(Kind.DISK_RENEWED) == 2:
                break
        assert disk.target.luns[0].backend.read_sync(0, 512) == gold[:512]  # type: ignore[attr-defined]

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    kinds = [e.kind for e in events if e.service == "disk"]
    assert kinds == [Kind.DISK_KEPT, Kind.DISK_RENEWED, Kind.DISK_RENEWED], events
    assert sorted(p.name for p in (tmp_path / "state" / "overlays").iterdir()) == ["a.qcow2"]
    assert_check_clean(tmp_path / "state" / "overlays" / "a.qcow2")


def adopting(tmp_path: Path, dhcp: str) -> tuple[Config, LeaseStore, Fleet, list[Event]]:
    """An open fleet with machine a, adopting unknown MACs (``dhcp``: more
    keys of the dhcp section), its lease store and the events it sends."""
    extra = f"dhcp:\n  subnet: 10.9.0.0/24\n  unknown_machines: default\n  {dhcp}\n" \
        "listen: {dhcp: {address: 10.9.0.1}, http: 10.9.0.1:8080}\n"
    cfg = load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", extra=extra))
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(cfg, bus, LeaseStore(tmp_path / "leases.db"))
    fleet.open()
    assert fleet.leases is not None
    return cfg, fleet.leases, fleet, events


def test_adoption_runs_once_per_mac_and_survives_a_restart(tmp_path: Path) -> None:
    cfg, leases, fleet, events = adopting(tmp_path, "max_adopted: 1")

    async def main() -> None:
        first, second = await asyncio.gather(fleet.adopt(C), fleet.adopt(C))
        assert first is second and first is not None and first.hostname == "pxe-525400000003"
        assert fleet.machine(C) is first and first.target_iqn in fleet.targets and fleet.servable(first)
        # dhcp.max_adopted: 1: the next unknown MAC is not made a machine, and that is said once
        assert await fleet.adopt("52:54:00:00:00:04") is None and await fleet.adopt("52:54:00:00:00:05") is None

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    kinds = [e.kind for e in events]
    assert kinds.count(Kind.DHCP_ADOPTED) == 1 and kinds.count(Kind.FLEET_ADOPTION_CAPPED) == 1
    again = Fleet(cfg, Bus(), leases)  # after a restart: a machine again, with its disk
    again.open()
    try:
        assert again.machine(C) is not None and again.disk(C) is not None
    finally:
        again.close()
        leases.close()


def test_adoptions_under_way_count_against_the_cap(tmp_path: Path) -> None:
    """MACs that ask while other MACs' disks are still being made: no more
    than dhcp.max_adopted machines in all (a burst overshot it by the
    adoptions under way: 42 of 40 in tests/e2e/test_dhcp_clients.py)."""
    cfg, leases, fleet, events = adopting(tmp_path, "max_adopted: 2")

    async def main() -> list[object]:
        return await asyncio.gather(*(fleet.adopt(f"52:54:00:00:01:{n:02x}") for n in range(5)))

    try:
        made = asyncio.run(main())
    finally:
        fleet.close()
        leases.close()
    assert sum(m is not None for m in made) == 2
    assert [e.kind for e in events].count(Kind.DHCP_ADOPTED) == 2


def test_adopted_machines_that_never_boot_expire(tmp_path: Path) -> None:
    """A storm of random MACs leaves nothing behind: an adopted machine that
    does not log in to its disk within dhcp.adopted_expiry is forgotten, its
    disk deleted and its slot under max_adopted freed; one that logged in stays,
    across a restart too."""
    cfg, leases, fleet, events = adopting(tmp_path, "max_adopted: 2\n  adopted_expiry: 60")
    D, E = "52:54:00:00:00:04", "52:54:00:00:00:05"

    async def main() -> None:
        booted, idle = await fleet.adopt(C), await fleet.adopt(D)
        assert booted is not None and idle is not None and await fleet.adopt(E) is None  # capped at 2
        fleet.on_event(Event(Kind.ISCSI_LOGIN, time.time(), None, None, None, booted.initiator_iqn,
                             booted.target_iqn, None, {}))
        overlay = cfg.overlays_dir / f"{idle.hostname}.qcow2"
        assert overlay.exists()
        fleet.on_event(Event(Kind.DHCP_DISCOVERED, time.time() + 61, E, None, None, None, None, None, {}))
        assert fleet.machine(D) is None and idle.target_iqn not in fleet.targets and not overlay.exists()
        assert fleet.machine(C) is not None and booted.target_iqn in fleet.targets
        assert await fleet.adopt(E) is not None  # the slot is free again

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    expired = [e for e in events if e.kind is Kind.FLEET_ADOPTION_EXPIRED]
    assert [e.mac for e in expired] == [D] and "never logged in" in str(expired[0].fields["why"])
    again = Fleet(cfg, Bus(), leases)  # after a restart: C (booted) and E (still within its time), not D
    again.open()
    try:
        assert again.machine(C) is not None and again.machine(D) is None and again.machine(E) is not None
        assert again._unbooted.keys() == {E}
    finally:
        again.close()
        leases.close()


def test_reload_is_a_diff_and_logged_in_disks_stay(tmp_path: Path) -> None:
    path = lab(tmp_path, f"  {A}: {{hostname: a}}\n  {B}: {{hostname: b}}\n")
    bus = Bus()
    fleet = Fleet(load(path), bus)
    fleet.open()
    old_a = fleet.disk(A)
    old_b = fleet.disk(B)
    assert old_a is not None and old_b is not None
    old_b.target.sessions.add(object())  # type: ignore[arg-type]
    # b is renamed while logged in, a is unchanged, c joins
    lab(tmp_path, f"  {A}: {{hostname: a}}\n  {B}: {{hostname: bee}}\n  {C}: {{hostname: c}}\n")
    try:
        diff = asyncio.run(fleet.apply(load(path)))
        assert diff.machines.added == (C,) and diff.machines.changed == (B,) and not diff.machines.removed
        assert diff.kept == ("b",) and not diff.restart
        assert "machines: 1 added (c); 1 changed (bee)" in diff.summary()
        assert fleet.disk(A) is old_a and fleet.disk(B) is old_b and fleet.disk(C) is not None
        assert set(fleet.targets) == {old_a.target.name, old_b.target.name, fleet.disk(C).target.name}  # type: ignore[union-attr]
        old_b.target.sessions.clear()  # b logged out: the next reload applies its new name
        lab(tmp_path, f"  {A}: {{hostname: a}}\n  {B}: {{hostname: bee}}\n", extra="domain: other\n")
        diff = asyncio.run(fleet.apply(load(path)))
        assert diff.machines.removed == (C,) and diff.machines.changed == (B,) and not diff.kept
        assert diff.restart == ("domain",)
        new_b = fleet.disk(B)
        assert new_b is not None and new_b.machine.hostname == "bee" and fleet.disk(C) is None
        assert set(fleet.targets) == {old_a.target.name, new_b.target.name}
    finally:
        fleet.close()


def test_a_restart_keeps_a_running_machines_ephemeral_disk(tmp_path: Path) -> None:
    """A server restart is no new boot: the machine still running on its
    ephemeral overlay keeps it; its next boot gets a fresh one."""
    cfg = load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", "ephemeral"))
    fleet = Fleet(cfg, Bus())
    fleet.open()
    disk = fleet.disk(A)
    assert disk is not None and disk.fresh
    disk.target.luns[0].backend.write_sync(0, b"\x55" * 512)  # type: ignore[attr-defined]
    fleet.close()
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(cfg, bus)
    fleet.open()
    try:
        disk = fleet.disk(A)
        assert disk is not None and not disk.fresh
        assert disk.target.luns[0].backend.read_sync(0, 512) == b"\x55" * 512  # type: ignore[attr-defined]
        assert asyncio.run(fleet.renew(A))  # its next boot
        gold = (tmp_path / "state" / "images" / "gold.raw").read_bytes()
        assert disk.target.luns[0].backend.read_sync(0, 512) == gold[:512]  # type: ignore[attr-defined]
    finally:
        fleet.close()
    assert [e.kind for e in events if e.service == "disk"] == [Kind.DISK_RENEWED]


def test_a_login_during_renewal_keeps_the_old_disk(tmp_path: Path) -> None:
    """The new overlay is made beside the served one; if the machine logs
    in meanwhile, that boot keeps the disk and the new one waits for the
    next boot; a fleet closed meanwhile leaves no waiting overlay behind."""
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", "ephemeral")), bus)
    fleet.open()
    disk = fleet.disk(A)
    assert disk is not None
    disk.fresh = False
    made = fleet._fresh_backend

    def login_meanwhile(d: object) -> object:
        backend = made(d)  # type: ignore[arg-type]
        disk.target.sessions.add(object())  # type: ignore[arg-type]
        return backend

    fleet._fresh_backend = login_meanwhile  # type: ignore[method-assign]
    lun = disk.target.luns[0]
    lun.backend.write_sync(0, b"\x77" * 512)  # type: ignore[attr-defined]
    try:
        assert asyncio.run(fleet.renew(A)) and disk.target.standby is not None
        assert lun.backend.read_sync(0, 512) == b"\x77" * 512  # type: ignore[attr-defined]
    finally:
        fleet.close()
    assert [e.kind for e in events if e.service == "disk"] == [Kind.DISK_KEPT]
    overlays = tmp_path / "state" / "overlays"
    assert sorted(p.name for p in overlays.iterdir()) == ["a.qcow2"]  # the waiting one is gone
    assert_check_clean(overlays / "a.qcow2")


def test_events_are_joined_to_their_machine(tmp_path: Path) -> None:
    """mac_of, which the flight recorder joins boots with: the event's MAC,
    else its initiator's or target's machine, else the machine at its address."""
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a, ip: 10.9.0.5}}\n  {B}: {{hostname: b}}\n")), Bus())
    fleet.open()
    try:
        a = fleet.machine(A)
        assert a is not None
        assert fleet.mac_of(Event(Kind.ISCSI_LOGIN, 0.0, initiator=a.initiator_iqn)) == A
        assert fleet.mac_of(Event(Kind.ISCSI_LOGIN, 0.0, initiator="iqn.2026-11.x:win", target=a.target_iqn)) == A
        assert fleet.mac_of(Event(Kind.TFTP_SENT, 0.0, peer="10.9.0.5")) == A
        assert fleet.mac_of(Event(Kind.ISCSI_LOGIN, 0.0, peer="10.9.0.5:3333")) == A
        assert fleet.mac_of(Event(Kind.DHCP_OFFER, 0.0, mac=B)) == B
        assert fleet.mac_of(Event(Kind.ISCSI_LOGIN, 0.0, initiator="iqn.2026-11.x:stranger")) is None
    finally:
        fleet.close()


def test_a_machine_is_known_at_its_addresses(tmp_path: Path) -> None:
    """mac_at, which decides who may have a machine's script: its fixed IP,
    its lease, or in proxy mode the address another server gave it (the
    latest one only)."""
    leases = LeaseStore(":memory:")
    bus = Bus()
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a, ip: 10.9.0.11}}\n  {B}: {{hostname: b}}\n")), bus,
                  leases)
    from bootsvc.dhcp.leases import Lease, LeaseState
    from bootsvc.dhcp.message import IPv4
    leases.put(Lease(IPv4("10.9.0.100"), B, LeaseState.BOUND, 1e12))
    assert (fleet.mac_at("10.9.0.11"), fleet.mac_at("10.9.0.100"), fleet.mac_at("10.9.0.99")) == (A, B, None)
    assert fleet.mac_at("not an address") is None
    bus.emit(Kind.DHCP_ACK, mac=B, ip="192.168.1.50", proxy=True)
    assert fleet.mac_at("192.168.1.50") == B
    bus.emit(Kind.DHCP_ACK, mac=B, ip="192.168.1.51", proxy=True)
    assert (fleet.mac_at("192.168.1.50"), fleet.mac_at("192.168.1.51")) == (None, B)
    bus.emit(Kind.DHCP_ACK, mac="52:54:00:99:99:99", ip="192.168.1.52", proxy=True)  # not a machine
    assert fleet.mac_at("192.168.1.52") is None


def test_a_running_machines_address_is_not_given_away(tmp_path: Path) -> None:
    """A diskless OS never renews the lease its boot firmware got: while
    the machine is logged in to its disk from that address, the address
    stays out of the pool even after the lease ran out; once the session
    is gone it is free again."""
    from bootsvc.dhcp.leases import Lease, LeaseState
    from bootsvc.dhcp.message import IPv4
    leases = LeaseStore(":memory:")
    bus = Bus()
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a, ip: 10.9.0.11}}\n  {B}: {{hostname: b}}\n")), bus,
                  leases)
    fleet.open()
    try:
        ip = IPv4("10.9.0.100")
        leases.put(Lease(ip, B, LeaseState.BOUND, 1000.0))  # ran out long ago
        disk = fleet.disk(B)
        assert disk is not None
        disk.target.sessions.add(_Session(_Link("10.9.0.100:51000")))  # type: ignore[arg-type]
        bus.emit(Kind.ISCSI_LOGIN, mac=B, peer="10.9.0.100:51000")
        taken = fleet.reserved_ips()
        assert IPv4("10.9.0.11") in taken and ip in taken and IPv4("10.9.0.101") not in taken
        assert leases.free_address(ip, IPv4("10.9.0.101"), 2000.0, taken) == IPv4("10.9.0.101")
        assert fleet.mac_at("10.9.0.100") == B  # its script and events are still its own
        disk.target.sessions.clear()  # the machine is gone
        assert ip not in fleet.reserved_ips()
        assert fleet.mac_at("10.9.0.100") is None
    finally:
        fleet.close()


@dataclass(frozen=True)
class _Link:
    peer: str


@dataclass(frozen=True)
class _Session:
    link: _Link


def test_a_shutdown_during_a_renewals_renames_leaves_it_named(tmp_path: Path) -> None:
    """The renames that give a served renewal its disk's name run in a
    worker thread (on Ceph, round trips to the cluster); the event loop
    ending right after the swap (asyncio.run cancelling what is left) must
    not leave the served disk without its name: close waits for them. A
    second renewal meanwhile waits for the first's renames too."""
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n", "ephemeral")), bus)
    fleet.open()
    keep = fleet.store.keep_renewal
    calls: list[float] = []

    def slow_keep(machine: object) -> None:
        time.sleep(0.3)  # a slow cluster
        keep(machine)  # type: ignore[arg-type]
        calls.append(time.monotonic())

    fleet.store.keep_renewal = slow_keep  # type: ignore[method-assign]
    overlays = tmp_path / "state" / "overlays"
    gold = (tmp_path / "state" / "images" / "gold.raw").read_bytes()
    disk = fleet.disk(A)
    assert disk is not None
    disk.fresh = False
    try:
        async def twice() -> None:
            assert await fleet.renew(A)
            assert (overlays / ".a.renewal.qcow2").exists()  # served, not named yet: the loop went on
            disk.fresh = False  # logged in: its next boot renews again, once the renames are done
            assert await fleet.renew(A)
            assert len(calls) == 1
        asyncio.run(twice())
        assert len(calls) == 1  # the second one's renames still running as the loop ended
        disk.target.luns[0].backend.write_sync(0, b"\x99" * 512)  # type: ignore[attr-defined]
    finally:
        fleet.close()
    assert len(calls) == 2
    assert sorted(p.name for p in overlays.iterdir()) == ["a.qcow2"]
    assert_check_clean(overlays / "a.qcow2")
    served = Fleet(load(tmp_path / "bootsvc.yaml"), Bus())
    served.open()
    try:
        again = served.disk(A)
        assert again is not None  # the disk last served, under its name
        assert again.target.luns[0].backend.read_sync(0, 1024) == b"\x99" * 512 + gold[512:1024]  # type: ignore[attr-defined]
    finally:
        served.close()
    assert [e.kind for e in events if e.service == "disk"] == [Kind.DISK_RENEWED, Kind.DISK_RENEWED]
