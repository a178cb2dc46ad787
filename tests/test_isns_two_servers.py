"""Two bootsvc servers registering with one iSNS server (issue 22: several
servers on one pool): each under its own control node and entity
(isns.name), side by side, on open-isns's isnsd and on bootsvc's own iSNS
server. Each registers only the machines' targets whose disks it holds, at
its own portal; a machine asking iSNS as itself sees its target and, through
the target's entity, the portal of the server that holds its disk; when the
disk moves, the registration moves with it.

The registrations are bootsvc's own (IsnsRegistration.sync, as ``bootsvc
serve`` runs it), given what each server holds; who holds what is the
Ceph lock's business, tested with two real servers in
tests/e2e/test_ceph_two_servers.py."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootsvc.config import Config, load
from bootsvc.events import Bus, Event, Kind
from bootsvc.isns_registration import RECORD, IsnsRegistration, Wanted, wanted
from bootsvc.address import HostPort
from isns.client import IsnsClient, NodeSpec
from isns.protocol import NodeType
from isns.registry import Registry
from isns.server import IsnsServer
from tests.e2e.peers import LOOPBACK, isns_names, isnsadm, isnsd
from tests.loop_thread import serving

PREFIX = "iqn.2026-12.test.lab"
HOSTS = ("m1", "m2", "m3")
PORTALS = {"a": "127.0.0.1", "b": "127.0.0.2"}


def _config(tmp_path: Path, name: str, hosts: tuple[str, ...]) -> Config:
    d = tmp_path / name
    (d / "profiles").mkdir(parents=True, exist_ok=True)  # exists when the server starts again
    (d / "profiles" / "p.yaml").write_text("base: gold.raw\n")
    machines = "".join(f"  52:54:00:00:00:{i:02x}: {{hostname: {h}}}\n" for i, h in enumerate(HOSTS, 1)
                       if h in hosts)
    cfg = d / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {d / 'state'}\niqn_prefix: {PREFIX}\nprofiles_dir: profiles\ndefault_profile: p\n"
                   f"listen:\n  iscsi: [{PORTALS[name]}:3260]\nisns:\n  name: server-{name}\n"
                   f"machines:\n{machines}")
    return load(cfg)


class Server:
    """One bootsvc's registration, holding the disks of ``held``; it keeps
    its record of registered DDs in its state_dir, as ``bootsvc serve``."""

    def __init__(self, cfg: Config, port: int) -> None:
        self.cfg = cfg
        self.held: set[str] = set()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.reg = IsnsRegistration(HostPort(LOOPBACK, port), cfg.control_node, self.what, Bus(),
                                    record=cfg.state_dir / RECORD)

    def what(self) -> Wanted:
        machines = list(self.cfg.machines.values())
        return wanted(self.cfg, machines, {m.target_iqn: m.hostname for m in machines if m.hostname in self.held},
                      {m.target_iqn for m in machines})


@pytest.fixture(params=["bootsvc", "isnsd"])
def iscsi_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    if request.param == "isnsd":
        if not shutil.which("isnsd"):
            pytest.skip("needs isnsd (open-isns-server)")
        with isnsd(tmp_path, f"{PREFIX}:isnsd", default_dd=False) as port:
            yield port
        return
    # bootsvc's iSNS server (strict): the other server's control node is configured, as docs/scale-out.md says
    srv = IsnsServer(Registry(control_nodes={f"{PREFIX}:bootsvc.server-a", f"{PREFIX}:bootsvc.server-b"}),
                     LOOPBACK, 0)
    with serving(srv.start, srv.stop):
        yield srv.port


def _target(host: str) -> str:
    return f"{PREFIX}:boot.{host}"


def _seen_by(tmp_path: Path, port: int, host: str) -> tuple[list[str], str]:
    """What the machine's initiator, registered as itself, finds in iSNS:
    the nodes, and the portals of its target's entity."""
    me = f"{PREFIX}:{host}"
    with IsnsClient(LOOPBACK, port, me) as c:
        c.register(f"entity-{host}", [NodeSpec(me, NodeType.INITIATOR)])
        nodes = sorted(str(n["ISCSI_NAME"]) for n in c.list("node"))
    # isnsadm's query of the target: the node with its entity's portals
    rc, out = isnsadm(tmp_path, port, me, "--query", f"iscsi-name={_target(host)}")
    assert rc == 0, out
    return nodes, out


def test_two_servers_register_side_by_side_and_a_disk_moves(tmp_path: Path, iscsi_port: int) -> None:
    a = Server(_config(tmp_path, "a", HOSTS), iscsi_port)
    b = Server(_config(tmp_path, "b", HOSTS[:2]), iscsi_port)  # b does not have m3
    assert a.cfg.control_node == f"{PREFIX}:bootsvc.server-a" != b.cfg.control_node
    a.held, b.held = {"m1", "m3"}, {"m2"}

    async def sync(*servers: Server) -> None:
        for s in servers:
            await s.reg.sync()

    asyncio.run(sync(a, b))
    with IsnsClient(LOOPBACK, iscsi_port, a.cfg.control_node) as admin:
        entities = sorted(str(e["ENTITY_IDENTIFIER"]) for e in admin.list("entity"))
        assert {a.cfg.control_node, b.cfg.control_node} <= set(entities), entities
        dds = {str(d["DD_SYMBOLIC_NAME"]) for d in admin.list("dd")}
        assert {"boot-m1", "boot-m2", "boot-m3"} <= dds  # b's sync kept a's boot-m3
    # each machine sees its own target, at the portal of the server holding its disk
    nodes, out = _seen_by(tmp_path, iscsi_port, "m1")
    assert nodes == sorted([f"{PREFIX}:m1", _target("m1")]) and "127.0.0.1" in out and "127.0.0.2" not in out, out
    nodes, out = _seen_by(tmp_path, iscsi_port, "m2")
    assert _target("m2") in nodes and "127.0.0.2" in out and "127.0.0.1" not in out, out

    # m1's disk moves to b: a lets it go (and says so first), b claims it
    a.held.discard("m1")
    asyncio.run(sync(a))
    b.held.add("m1")
    asyncio.run(sync(b))
    nodes, out = _seen_by(tmp_path, iscsi_port, "m1")
    assert _target("m1") in nodes and "127.0.0.2" in out and "127.0.0.1" not in out, out
    assert isns_names(out).count(_target("m1")) == 1

    # b dies holding m2 (its registration stays); a takes the disk over (the
    # Ceph lock let it) and registers it: a's registration wins the node
    a.held.add("m2")
    asyncio.run(sync(a))
    nodes, out = _seen_by(tmp_path, iscsi_port, "m2")
    assert _target("m2") in nodes and "127.0.0.1" in out, out
    a.held.discard("m2")
    asyncio.run(sync(a))
    b.reg._registered_nodes = None  # b restarted: its first registration replaces what it left
    asyncio.run(sync(b))

    # a stops: its entity goes, b's stays with both disks it holds
    asyncio.run(a.reg.stop())
    with IsnsClient(LOOPBACK, iscsi_port, b.cfg.control_node) as admin:
        entities = {str(e["ENTITY_IDENTIFIER"]) for e in admin.list("entity")}
        assert b.cfg.control_node in entities and a.cfg.control_node not in entities, entities
        targets = {str(n["ISCSI_NAME"]) for n in admin.list("node")} & {_target(h) for h in HOSTS}
        assert targets == {_target("m1"), _target("m2")}


def _registered(port: int, source: str) -> tuple[set[str], dict[str, set[str]]]:
    """The nodes and the DDs (with their members) registered."""
    with IsnsClient(LOOPBACK, port, source) as admin:
        nodes = {str(n["ISCSI_NAME"]) for n in admin.list("node")}
        dds = {str(d["DD_SYMBOLIC_NAME"]): set(map(str, d.get("DD_MEMBER_ISCSI_NAME", []))) for d in admin.list("dd")}
    return nodes, dds


def test_a_machine_removed_while_its_server_was_down_loses_its_dd_at_restart(tmp_path: Path,
                                                                             iscsi_port: int) -> None:
    """a has m1, m2, m3 (serving m2 and m3), b has m1 (serving it). a goes
    down without deregistering (killed) and comes back with only m2: its
    first registration removes m3's DD and target, left from before; m1's
    DD stays, since b serves m1; b's registrations are untouched."""
    a = Server(_config(tmp_path, "a", HOSTS), iscsi_port)
    b = Server(_config(tmp_path, "b", ("m1",)), iscsi_port)
    a.held, b.held = {"m2", "m3"}, {"m1"}

    async def sync(*servers: Server) -> None:
        for s in servers:
            await s.reg.sync()

    asyncio.run(sync(a, b))
    nodes, dds = _registered(iscsi_port, b.cfg.control_node)
    assert {"boot-m1", "boot-m2", "boot-m3"} <= set(dds) and {_target("m1"), _target("m3")} <= nodes
    b_before = (nodes & {b.cfg.control_node, _target("m1")}, dds["boot-m1"])

    # a is killed (no deregistration), its config loses m1 and m3, it starts again
    restarted = Server(_config(tmp_path, "a", ("m2",)), iscsi_port)
    restarted.held = {"m2"}
    asyncio.run(sync(restarted))
    nodes, dds = _registered(iscsi_port, b.cfg.control_node)
    assert "boot-m3" not in dds and _target("m3") not in nodes  # a's leftovers gone
    assert dds["boot-m2"] == {f"{PREFIX}:m2", _target("m2")} and _target("m2") in nodes
    assert (nodes & {b.cfg.control_node, _target("m1")}, dds["boot-m1"]) == b_before  # b's untouched
    _, out = _seen_by(tmp_path, iscsi_port, "m1")
    assert "127.0.0.2" in out and "127.0.0.1" not in out, out  # still at b's portal

    # b stops serving m1 and a's record holds nothing of m1 any more: b's DD stays b's
    b.held.clear()
    asyncio.run(sync(b, restarted))
    assert "boot-m1" in _registered(iscsi_port, b.cfg.control_node)[1]


def test_the_record_of_registered_dds_is_read_with_care(tmp_path: Path) -> None:
    """A damaged record is said and ignored; one made with another iSNS
    server (or server name) is not ours to act on there."""
    said: list[str] = []
    record = tmp_path / RECORD

    def reg(port: int = 3205, name: str = f"{PREFIX}:bootsvc.a") -> IsnsRegistration:
        return IsnsRegistration(HostPort(LOOPBACK, port), name, lambda: Wanted((), (), {}), Bus(), said.append,
                                record=record)

    assert reg()._registered_dds == set()  # none yet
    record.write_text("{not json")
    assert reg()._registered_dds == set() and said and str(record) in said[0] and "unreadable" in said[0]
    kept = reg()
    kept._remember({"boot-m1", "boot-m2"})
    assert reg()._registered_dds == {"boot-m1", "boot-m2"}
    assert reg(port=3206)._registered_dds == set() and reg(name=f"{PREFIX}:bootsvc.b")._registered_dds == set()
    record.write_text('{"server": "127.0.0.1:3205", "entity": "%s:bootsvc.a", "dds": ["boot-m1", 7, "x"]}' % PREFIX)
    assert reg()._registered_dds == {"boot-m1"}


def test_a_disk_event_registers_again() -> None:
    """A claim or a release of a disk on shared storage wakes the registration."""
    reg = IsnsRegistration(HostPort(LOOPBACK, 1), f"{PREFIX}:bootsvc.x", lambda: Wanted((), (), {}), Bus())
    for kind in (Kind.DISK_CLAIMED, Kind.FLEET_RELOADED):
        reg._wake.clear()
        reg._on_event(Event(kind, 0.0))
        assert reg._wake.is_set()
    reg._wake.clear()
    reg._on_event(Event(Kind.ISNS_SYNCED, 0.0))
    reg._on_event(Event("target.something_new", 0.0))  # an embedded package's event bootsvc does not know
    assert not reg._wake.is_set()
    reg._on_event(Event("disk.released", 0.0))  # a release, whatever its Kind will be
    assert reg._wake.is_set()
