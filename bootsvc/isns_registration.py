"""What bootsvc tells an iSNS server (RFC 4171), through isns.client: its
iSCSI portals and every target it serves, as one network entity (§6.2)
named after its control node ``<iqn_prefix>:bootsvc.<isns.name>``, so
several servers register side by side (bootsvc/server_name.py),
each target on each portal in that portal's group (Portal Group objects,
§6.5: the TPGT an initiator logging in there is given; the control node
with a NULL tag, reached at none), and
per machine a discovery domain ``boot-<hostname>`` holding the machine's
initiator and its boot target (§6.11.2), so an initiator asking iSNS finds
exactly its own disk. A DD is removed only by the server that
registered it, once it no longer has the machine: two servers with
different machine lists do not remove each other's DDs, and a DD whose
target another server registers (it serves that machine) is left to it.
The DDs a server registered are kept in its state_dir (``record``), so
that a machine removed from its config while it was down loses its DD at
the next start: iSNS itself does not say who registered a DD, and every
server registers the same DD for a machine they share.

It registers at start, again when the config changes (reload, an adopted
machine) and every ``REFRESH`` seconds (so a server that restarted without
its database, or expires registrations, gets everything back); it
deregisters the entity at stop. A server that cannot be reached is
reported once per outage and retried; it never stops the other services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from isns import AsyncIsnsClient, IsnsClientError, NodeSpec, NodeType, PortalGroupSpec, PortalSpec
from isns.protocol import Status
from .address import HostPort

from .config import Config
from .events import Bus, Event, Kind
from .inventory import Machine

log = logging.getLogger("bootsvc.isns")

REFRESH = 300.0  # seconds between re-registrations
RETRY = 10.0  # seconds before trying an unreachable server again
DD_PREFIX = "boot-"  # the DDs bootsvc owns: one per machine
RECORD = "isns-registered.json"  # under state_dir: the DDs this server registered, and where
WILDCARDS = ("", "0.0.0.0", "::")
# register again now: the machines changed, or (shared storage) the disks
# this server holds: a claim, a release, another server holding one, a
# disk lost. Not a renewal or a kept disk: every boot says one of those,
# and what is registered does not change with it.
WAKE = frozenset({Kind.FLEET_RELOADED, Kind.DHCP_ADOPTED, Kind.FLEET_ADOPTION_EXPIRED, Kind.DISK_CLAIMED,
                  Kind.DISK_RELEASED, Kind.DISK_ELSEWHERE, Kind.DISK_FAILED})


@dataclass(frozen=True)
class Wanted:
    """Everything bootsvc should have registered, from the config."""

    portals: tuple[PortalSpec, ...]
    nodes: tuple[NodeSpec, ...]
    dds: dict[str, tuple[str, ...]]  # DD name -> members
    groups: tuple[PortalGroupSpec, ...] = ()


def wanted(cfg: Config, machines: Iterable[Machine], targets: Mapping[str, str],
           served: Collection[str] | None = None) -> Wanted:
    """``targets``: iSCSI name -> alias of every target registered at our
    portals; ``served``: every target this server has (default: those),
    whose machines get their DD. On shared storage a machine's target is
    registered only by the server holding its disk, so iSNS says which
    portal serves which machine; its DD is everyone's (the same members)."""
    served = targets if served is None else served
    portals = []
    groups = []
    for p in cfg.iscsi.portals:
        for host in _announced(cfg, p):
            portals.append(PortalSpec(host, p.port))
            groups += [PortalGroupSpec(name, host, p.port, p.tpgt) for name in sorted(targets)]
            # the control node is no iSCSI node of the portal: a NULL tag, or the
            # server would relate it with tag 1 (§3.4)
            groups.append(PortalGroupSpec(cfg.control_node, host, p.port, None))
    nodes = [NodeSpec(cfg.control_node, NodeType.CONTROL, "bootsvc")]
    nodes += [NodeSpec(name, NodeType.TARGET, alias or None) for name, alias in sorted(targets.items())]
    dds = {f"{DD_PREFIX}{m.hostname}": (m.initiator_iqn, m.target_iqn)
           for m in machines if m.target_iqn in served}
    return Wanted(tuple(portals), tuple(nodes), dds, tuple(groups))


def _announced(cfg: Config, portal: HostPort) -> list[str]:
    """The addresses a portal is reached at: its own, or for a wildcard the
    addresses the DHCP server hands out as ours."""
    if portal.host not in WILDCARDS:
        return [portal.host]
    if cfg.dhcp is None:
        return []
    return sorted({str(s.server) for s in cfg.dhcp.subnets if s.server is not None})


class IsnsRegistration:
    """``what``: what should be registered (the fleet's ``isns_wanted``).
    It registers again at once when the fleet changes (the bus's
    ``fleet.reloaded`` and ``dhcp.adopted`` events)."""

    def __init__(self, server: HostPort, source: str, what: Callable[[], Wanted], bus: Bus,
                 report: Callable[[str], None] = log.warning, refresh: float = REFRESH,
                 record: Path | None = None) -> None:
        self.server = server
        self.source = source
        self.what = what
        self.bus = bus
        self.report = report
        self.refresh = refresh
        self.entity = source  # one entity, named after bootsvc's own iSCSI name
        self._registered_nodes: set[str] | None = None  # None: nothing registered by this process yet
        self.record = record
        self._registered_dds = self._recorded()  # the machines' DDs this server keeps
        self._written = False  # the record holds this process's registrations
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down = False

    async def start(self) -> None:
        self.bus.subscribe(self._on_event)
        self._task = asyncio.ensure_future(self._run())

    def _on_event(self, event: Event) -> None:
        if event.kind in WAKE:
            self._wake.set()

    async def stop(self) -> None:
        self.bus.unsubscribe(self._on_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError, IsnsClientError, asyncio.TimeoutError):
            async with self._client() as c:
                await c.deregister_entity(self.entity)
                self.bus.emit(Kind.ISNS_DEREGISTERED, entity=self.entity, server=str(self.server))

    def _client(self) -> AsyncIsnsClient:
        return AsyncIsnsClient(self.server.host, self.server.port, self.source)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.sync()
                delay = self.refresh
            except (OSError, IsnsClientError, asyncio.TimeoutError) as e:
                if not self._down:
                    self.report(f"iSNS server {self.server}: {e}; registering again every {RETRY:.0f} s")
                self._down = True
                delay = RETRY
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _register(self, c: AsyncIsnsClient, want: Wanted, replace: bool) -> None:
        """Register the entity; a target still registered by another server
        (one killed while it held the disk, whose lock Ceph has since
        broken for us) is taken from it: a node is in one entity only
        (RFC 4171 §6.1), and this server holds the disk now."""
        try:
            await c.register(self.entity, want.nodes, want.portals, groups=want.groups, replace=replace)
            return
        except IsnsClientError as e:
            if e.status is not Status.INVALID_REGISTRATION:
                raise
        for node in want.nodes:
            if node.type is NodeType.TARGET:
                with contextlib.suppress(IsnsClientError):  # not registered anywhere: nothing to take
                    await c.deregister_node(node.name)
        await c.register(self.entity, want.nodes, want.portals, groups=want.groups, replace=True)

    async def sync(self) -> None:
        """Bring the server in line with the config: portals and targets,
        then the machines' DDs; what bootsvc registered before and no longer
        serves goes."""
        want = self.what()
        async with self._client() as c:
            names = {n.name for n in want.nodes}
            # the entity is registered anew, replaced, at this process's first
            # registration (a server killed before it could deregister left its
            # old entity behind) and when a target went (removed, or its disk
            # let go to another server): so that its portal groups go too
            # (isnsd keeps a deregistered node's portal groups, and would show
            # the old portal beside the new one)
            await self._register(c, want, self._registered_nodes is None or bool(self._registered_nodes - names))
            self._registered_nodes = names
            have = {str(d.get("DD_SYMBOLIC_NAME")): d for d in await c.list("dd")}
            for name, members in want.dds.items():
                dd = have.get(name)
                if dd is None:
                    await c.dd_register(name, members)
                    continue
                current = list(dd.get("DD_MEMBER_ISCSI_NAME", []))
                extra = [m for m in current if m not in members]
                if extra:
                    await c.dd_remove_members(int(dd["DD_ID"]), extra)
                missing = [m for m in members if m not in current]
                if missing:
                    await c.dd_add_members(int(dd["DD_ID"]), missing)
            # only the DDs this server registered (now or before a restart)
            # and no longer wants: another server on the same iSNS server
            # keeps the DDs of its own machines
            gone = [have[name] for name in sorted(self._registered_dds - set(want.dds)) if name in have]
            elsewhere = await self._targets_elsewhere(c, names) if gone else set()
            for dd in gone:
                if not elsewhere.intersection(dd.get("DD_MEMBER_ISCSI_NAME", [])):
                    await c.dd_deregister(int(dd["DD_ID"]))
            self._remember(set(want.dds))
        if self._down:
            self.report(f"iSNS server {self.server}: registered again")
        self._down = False
        self.bus.emit(Kind.ISNS_SYNCED, server=str(self.server), targets=len(want.nodes) - 1, dds=len(want.dds))

    @staticmethod
    async def _targets_elsewhere(c: AsyncIsnsClient, ours: set[str]) -> set[str]:
        """The targets registered by other entities: the machines another
        server serves now, whose DD that server wants."""
        return {str(n.get("ISCSI_NAME")) for n in await c.list("node")
                if n.get("ISCSI_NODE_TYPE") == int(NodeType.TARGET)} - ours

    def _recorded(self) -> set[str]:
        """The DDs this server registered with this iSNS server before it
        (re)started; none when it kept no record or registered elsewhere."""
        if self.record is None:
            return set()
        try:
            kept = json.loads(self.record.read_text())
            if not isinstance(kept, dict) or not isinstance(kept.get("dds"), list):
                raise ValueError("not a record of registrations")
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as e:
            self.report(f"{self.record}: unreadable ({e}); DDs registered before this start are kept")
            return set()
        if kept.get("server") != str(self.server) or kept.get("entity") != self.entity:
            return set()  # another iSNS server's (or name's): its DDs are not ours to remove here
        return {name for name in kept["dds"] if isinstance(name, str) and name.startswith(DD_PREFIX)}

    def _remember(self, dds: set[str]) -> None:
        """Keep the DDs registered (written only when they changed)."""
        if dds == self._registered_dds and self._written:
            return
        self._registered_dds = dds
        if self.record is None:
            return
        tmp = self.record.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"server": str(self.server), "entity": self.entity, "dds": sorted(dds)}))
            os.replace(tmp, self.record)
            self._written = True
        except OSError as e:
            self.report(f"{self.record}: cannot keep the iSNS registrations ({e}); a machine removed while "
                        "bootsvc is down may keep its DD")
