"""``bootsvc serve`` wiring (DESIGN.md "Layers", 4): the event bus and its
subscribers, the fleet, and every service built from one config, handed
the fleet (or the part of it they ask) and the bus. Data flows one way:
services ask the fleet and emit events; nothing here is called back by a
service. A reload loads the config again and has the fleet apply the
difference; settings the services can take at once are handed to them.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

from isns import IsnsServer, Registry, Store, StoreError
from isns.limits import LOOPBACK
from target import Portal, TargetServer

from . import config as config_mod
from .boot import BootPlanner
from .dhcp.leases import LeaseStore
from .disk_watch import DiskWatch
from .dns.service import DnsService
from .dns.zone import Zone
from .events import EVENT_FILE, Bus, EventFile, LogWriter
from .fleet import Fleet, FleetError
from .fleet_diff import ConfigDiff
from .http.service import HttpService
from .iscsi_portals import describe as describe_portals
from .isns_registration import RECORD as ISNS_RECORD
from .isns_registration import IsnsRegistration
from .metrics import Metrics
from .recorder import BootStore, Recorder
from .service import Report, Services
from .tftp.files import FileSource
from .tftp.service import TftpService
from .views import FleetViews

if TYPE_CHECKING:  # scapy loads only when DHCP is on
    from .dhcp.responder import Responder
    from .dhcp.settings import DhcpSettings
    from .dhcp.supervisor import DhcpWorker


class ServeError(Exception):
    pass


def _lease_store(cfg: config_mod.Config) -> LeaseStore | None:
    """The leases under state_dir: this process's own, or with DHCP in a
    worker process the worker's, of which this process keeps a copy."""
    if cfg.dhcp is None:
        return None
    from .dhcp.settings import Process

    if cfg.dhcp.process is Process.WORKER:
        from .dhcp.supervisor import LeaseMirror

        return LeaseMirror(cfg.state_dir / "leases.db")
    return LeaseStore(cfg.state_dir / "leases.db")


class Server:
    """Everything ``bootsvc serve`` runs, built from one config."""

    def __init__(self, cfg: config_mod.Config, report: Report) -> None:
        self.path = cfg.path
        self.report = report
        self.bus = Bus()
        self.bus.subscribe(LogWriter())
        self.event_file = EventFile(cfg.state_dir / EVENT_FILE)
        self.bus.subscribe(self.event_file)
        self.boots = BootStore(cfg.recorder_db, cfg.recorder.history)
        self.leases = _lease_store(cfg)
        self.fleet = Fleet(cfg, self.bus, self.leases)
        try:
            self.fleet.open()
        except FleetError as e:
            self.close()
            raise ServeError(str(e)) from e
        self.recorder = Recorder(self.fleet, self.bus, self.boots, stall=cfg.recorder.stall)
        s = cfg.iscsi
        # the iSCSI server reads the fleet's own table of targets
        self.iscsi = TargetServer(self.fleet.targets, [Portal(p.host, p.port, p.tpgt) for p in s.portals],
                                  window=s.queue_depth,
                                  nop_interval=s.nop_interval, nop_timeout=s.nop_timeout,
                                  on_event=self.bus.sink("iscsi"), discovery_auth=s.discovery_auth,
                                  chap_algorithms=s.chap_algorithms, key_preferences=s.key_preferences)
        # /metrics: counted from the bus; the sessions open now asked of the target server when scraped
        self.metrics = Metrics(self.fleet, lambda: len(self.iscsi.sessions))
        self.bus.subscribe(self.metrics)
        self.planner = BootPlanner(self.fleet, self.bus.emit, s.portals[0].port if s.portals else 3260,
                                   cfg.http.port if cfg.http else None, has_file=lambda name: self.files.has(name))
        self.files = FileSource(list(cfg.tftp.roots) if cfg.tftp else [], generate=self.planner.script_file)
        self.services = Services(report)
        self.responder: Responder | None = None  # dhcp.process: inline
        self.dhcp_worker: DhcpWorker | None = None  # dhcp.process: worker
        self.tftp: TftpService | None = None
        self.dns: DnsService | None = None
        self._build(cfg)

    def close(self) -> None:
        """What outlives the services: the fleet's disks, the lease store, the
        event file and the recorder's store."""
        self.fleet.close()
        self.boots.close()
        if self.leases is not None:
            self.leases.close()
        self.event_file.close()

    # -- services ------------------------------------------------------------------

    def _build(self, cfg: config_mod.Config) -> None:
        if cfg.recorder.enabled:
            self.services.add("recorder", self.recorder.start, self.recorder.stop, str(cfg.recorder_db),
                              counted=False)
        if cfg.iscsi.portals:  # even with no target yet: a reload or an adopted machine may add some
            self.services.add("iscsi", self.iscsi.start, self.iscsi.stop,
                              f"{describe_portals(cfg.iscsi.portals)} ({len(self.fleet.targets)} targets)")
            # a request to a disk waiting too long (a Ceph cluster not answering) is said
            watch = DiskWatch(self.fleet, self.bus, lambda: self.fleet.cfg.storage.stall_after)
            self.services.add("disk watch", watch.start, watch.stop,
                              f"requests waiting over storage.stall_after ({cfg.storage.stall_after} s)",
                              counted=False)
        self._isns(cfg)
        if cfg.dhcp is not None:
            self._dhcp(cfg)
        if cfg.tftp is not None:
            tftp = self.tftp = TftpService(self.files, cfg.tftp.host, cfg.tftp.port, cfg.tftp.busy_poll,
                                           self.bus.emit, self.fleet.mac_at)
            self.services.add("tftp", tftp.start, tftp.stop,
                              f"{cfg.tftp.host}:{cfg.tftp.port} from {', '.join(map(str, cfg.tftp.roots))}")
        if cfg.http is not None:
            http = HttpService(self.files, self.planner.script_text, self.services.health, cfg.http.host,
                               cfg.http.port, self.bus.emit, self.fleet.mac_at,
                               views=FleetViews(self.fleet, self.leases, self.recorder),
                               metrics=self.metrics.exposition)
            self.services.add("http", http.start, http.stop, str(cfg.http))
        if cfg.dns is not None:
            server = cfg.dhcp.listeners[0].address if cfg.dhcp else None
            dns = self.dns = DnsService(Zone(cfg.domain, self.fleet.addresses, server, cfg.dns_ttl), cfg.dns.host,
                                        cfg.dns.port, cfg.dns_forward, self.bus.emit)
            self.services.add("dns", dns.start, dns.stop, f"{cfg.dns} for {cfg.domain}; {cfg.dns_forward.describe()}")

    def _isns(self, cfg: config_mod.Config) -> None:
        """listen.isns: our own iSNS server, its database under state_dir;
        and the registration of our portals, targets and the machines' DDs
        with it (or with isns.server)."""
        i = cfg.isns
        if i.listen is not None:
            registry = Registry(control_nodes={cfg.control_node, *i.control_nodes},
                                default_dd_visible=i.default_dd_visible, default_period=i.registration_period,
                                on_event=self.bus.sink("isns"), policy=i.policy)
            try:
                store = Store(cfg.state_dir / "isns.db")
                store.load(registry, time.time())
            except StoreError as e:
                self.close()
                raise ServeError(str(e)) from e
            server = IsnsServer(registry, i.listen.host, i.listen.port, store=store, on_event=self.bus.sink("isns"),
                                control_addresses=(*LOOPBACK, *i.control_addresses))

            async def stop_isns() -> None:
                await server.stop()
                store.close()

            self.services.add("isns", server.start, stop_isns, f"{i.listen} (TCP and UDP)")
        if i.target is not None and cfg.iscsi.portals:
            registration = IsnsRegistration(i.target, cfg.control_node, self.fleet.isns_wanted, self.bus,
                                            self.report, record=cfg.state_dir / ISNS_RECORD)
            self.services.add("isns registration", registration.start, registration.stop, f"with {i.target}")

    def _dhcp(self, cfg: config_mod.Config) -> None:
        from .dhcp.router_advert import RouterAdvertiser
        from .dhcp.settings import Process, sockets

        d = cfg.dhcp
        assert d is not None and self.leases is not None
        if d.process is Process.WORKER:
            from .dhcp.supervisor import DhcpWorker, LeaseMirror

            assert isinstance(self.leases, LeaseMirror)
            worker = self.dhcp_worker = DhcpWorker(self.fleet, self.bus, self.leases)
            # one start line per socket, as inline; the first starts the worker, which opens them all
            for i, socket in enumerate(sockets(d)):
                self.services.add(socket.name, worker.start if i == 0 else worker.started,
                                  worker.stop if i == 0 else worker.started, f"{socket.description} (worker process)",
                                  trouble=worker.trouble)
        else:
            self._dhcp_inline(d)
        for listener in d.listeners:
            if d.ipv6_ra and listener.interface:
                ra = RouterAdvertiser(listener.interface, self.bus.emit)
                self.services.add(f"ipv6-ra {listener.interface}", ra.start, ra.stop,
                                  f"{listener.interface}: router solicitations answered, no IPv6")

    def _dhcp_inline(self, d: DhcpSettings) -> None:
        """DHCP on serve's own loop (dhcp.process: inline)."""
        from .dhcp.responder import Responder
        from .dhcp.service import dhcp_services

        assert self.leases is not None
        self.responder = Responder(list(d.subnets), self.fleet, self.leases, self.planner, d.mode, d.unknown,
                                   self.bus.emit)
        # adopt is asked only under unknown_machines: default, which a reload may turn on
        for socket, service in dhcp_services(d, self.responder, self.fleet.adopt):
            self.services.add(socket.name, service.start, service.stop, socket.description)

    # -- run and reload ------------------------------------------------------------------

    def run(self) -> int:
        # What start-up made (modules, config, the fleet) lives as long as
        # the process: kept out of the collector's full passes, which then
        # scan only what serving makes. Measured on the DHCP path: the
        # longest pause of the loop from 43 to 15 ms (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        try:
            return self.services.run(self.reload)
        finally:
            self.close()

    async def reload(self) -> str:
        """Re-read the config; the fleet applies machines, targets and
        profiles now (a machine or target still logged in keeps its disk
        until it logs out); DHCP subnets and policy and TFTP roots and
        polling are handed to their services; the rest needs a restart."""
        try:
            new = config_mod.load(self.path)
        except config_mod.ConfigError as e:
            for p in e.problems:
                self.report(p)
            raise ServeError(f"{len(e.problems)} problem(s) in {self.path}") from None
        try:
            diff = await self.fleet.apply(new)
        except FleetError as e:
            raise ServeError(str(e)) from None
        self._retune(new, diff)
        for line in diff.lines():
            self.report(f"reload: {line}")
        return diff.summary()

    def _retune(self, new: config_mod.Config, diff: ConfigDiff) -> None:
        if "dhcp" in diff.live and self.responder is not None and new.dhcp is not None:
            self.responder.retune(list(new.dhcp.subnets), new.dhcp.unknown)
        if "tftp" in diff.live and new.tftp is not None:
            # TFTP and HTTP's /files/ serve from the new roots, the file cache dropped
            self.files.set_roots(list(new.tftp.roots))
            if self.tftp is not None:
                self.tftp.busy_poll = new.tftp.busy_poll
        if "dns_forward" in diff.live and self.dns is not None:
            self.dns.set_forwarding(new.dns_forward)
