"""`bootsvc serve` wiring (DESIGN.md "Layers"): the machines' disks and
targets, DHCP, TFTP, HTTP and DNS built from one config on one loop, and
SIGHUP reloads that change machines and targets without dropping the
iSCSI sessions of machines that stay."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from isns.registry import Registry
from isns.server import IsnsServer
from isns.store import Store, StoreError
from target.backend import BackendError
from target.server import TargetServer
from target.targets import Target, TargetConfigError

from . import config as config_mod
from . import server as server_mod
from .boot import BootPlanner
from .dhcp.leases import LeaseStore
from .disks import MachineDisks
from .dns.service import DnsService
from .dns.zone import Zone
from .http.service import HttpService
from .dhcp.responder import Responder, UnknownPolicy
from .images import ImageStore
from .inventory import Machine, generated_machine
from .isns_registration import IsnsRegistration, Wanted, wanted
from .scripts import mac_of_script
from .tftp.files import FileSource
from .tftp.service import TftpService

if TYPE_CHECKING:  # scapy loads only when DHCP is on
    from .dhcp.service import DhcpService

log = logging.getLogger("bootsvc.serve")
ANY_ADDRESSES = ("", "0.0.0.0", "::")


class ServeError(Exception):
    pass


class Serving:
    """Everything `bootsvc serve` runs, and what a reload may change."""

    def __init__(self, cfg: config_mod.Config, report: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.report = report
        self.leases: LeaseStore | None = None
        if cfg.dhcp is not None:
            self.leases = LeaseStore(cfg.state_dir / "leases.db")
            self._with_adopted(cfg)
        self.disks = MachineDisks(ImageStore(cfg), report=report)
        targets = self.disks.open()
        self.extra: dict[str, Target] = {}
        try:
            for spec in cfg.targets:
                self.extra[spec.iqn] = Target.open(spec)
        except (TargetConfigError, BackendError, OSError) as e:
            for t in [*targets, *self.extra.values()]:
                t.close()
            raise ServeError(str(e)) from e
        s = cfg.iscsi
        self.iscsi = TargetServer([*targets, *self.extra.values()], s.portals, portal_group_tag=s.portal_group_tag,
                                  window=s.queue_depth, nop_interval=s.nop_interval, nop_timeout=s.nop_timeout)
        self.planner = BootPlanner(cfg, self.disks, s.portals[0].port if s.portals else 3260,
                                   cfg.http.port if cfg.http else None)
        self.responder: Responder | None = None
        self.registration: IsnsRegistration | None = None
        self.services: list[server_mod.Service] = []
        self.running: dict[str, bool] = {}
        self.files = FileSource(list(cfg.tftp.roots) if cfg.tftp else [], generate=self._generated)
        self.tftp: TftpService | None = None
        self._build_services()

    # -- services ------------------------------------------------------------------

    def _build_services(self) -> None:
        cfg, s = self.cfg, self.cfg.iscsi
        if s.portals:  # even with no target yet: a reload or an adopted machine may add some
            self._add("iscsi", self.iscsi.start, self.iscsi.stop,
                      f"{', '.join(map(str, s.portals))} ({len(self.iscsi.targets)} targets)")
        self._isns()
        if cfg.dhcp is not None:
            self._dhcp()
        if cfg.tftp is not None:
            tftp = self.tftp = TftpService(self.files, cfg.tftp.host, cfg.tftp.port, cfg.tftp.busy_poll)

            async def stop_tftp() -> None:
                tftp.close()

            self._add("tftp", tftp.start, stop_tftp,
                      f"{cfg.tftp.host}:{cfg.tftp.port} from {', '.join(map(str, cfg.tftp.roots))}")
        if cfg.http is not None:
            http = HttpService(self.files, self._generated_text, self.health, cfg.http.host, cfg.http.port)
            self._add("http", http.start, http.stop, str(cfg.http))
        if cfg.dns is not None:
            server = cfg.dhcp.listeners[0].address if cfg.dhcp else None
            zone = Zone(cfg.domain, self.addresses, server, cfg.dns_ttl)
            dns = DnsService(zone, cfg.dns.host, cfg.dns.port)
            self._add("dns", dns.start, dns.stop, f"{cfg.dns} for {cfg.domain}")

    def _isns(self) -> None:
        """listen.isns: our own iSNS server, its database under state_dir;
        and the registration of our portals, targets and the machines' DDs
        with it (or with isns.server)."""
        i = self.cfg.isns
        if i.listen is not None:
            registry = Registry(control_nodes={self.cfg.control_node, *i.control_nodes},
                                default_dd_visible=i.default_dd_visible, default_period=i.registration_period,
                                on_event=_log_event("bootsvc.isns"))
            try:
                store = Store(self.cfg.state_dir / "isns.db")
                store.load(registry, time.time())
            except StoreError as e:
                raise ServeError(str(e)) from e
            server = IsnsServer(registry, i.listen.host, i.listen.port, store=store)

            async def stop_isns() -> None:
                await server.stop()
                store.close()

            self._add("isns", server.start, stop_isns, f"{i.listen} (TCP and UDP)")
        if i.target is not None and self.cfg.iscsi.portals:
            self.registration = IsnsRegistration(i.target, self.cfg.control_node, self._isns_wanted, self.report)
            self._add("isns registration", self.registration.start, self.registration.stop, f"with {i.target}")

    def _isns_wanted(self) -> Wanted:
        return wanted(self.cfg, {name: t.alias for name, t in self.iscsi.targets.items()})

    def _add(self, name: str, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None] | None],
             where: str) -> None:
        async def started() -> None:
            await start()
            self.running[name] = True

        self.running[name] = False
        self.services.append(server_mod.Service(name, started, stop, where))

    def _dhcp(self) -> None:
        from .dhcp.responder import Mode
        from .dhcp.service import DhcpService

        d = self.cfg.dhcp
        assert d is not None
        assert self.leases is not None
        responder = Responder(list(d.subnets), self.cfg.machines, self.leases, self.planner, d.mode, d.unknown,
                              self._dhcp_event, adopt=self.adopt)
        self.responder = responder
        leases = self.leases
        several = len(d.listeners) > 1
        for n, listener in enumerate(d.listeners):
            # every interface's socket answers from the one responder: one lease table, one inventory
            suffix = f" {listener.interface}" if several else ""
            service = DhcpService(responder, listener.address, listener.interface, listener.port)
            served = ", ".join(str(s.network) for s in d.subnets if s.server == listener.address)
            # services stop in reverse order: the first one stops last and closes the lease store
            self._add(f"dhcp ({d.mode.value}){suffix}", service.start,
                      self._closer(service, leases if n == 0 else None), f"{listener}, {served}")
            if d.ipv6_ra and listener.interface:
                self._router_advertiser(listener.interface)
            if d.mode is Mode.PROXY:
                # iPXE and PXE ROMs send their proxyDHCP REQUEST to port 4011
                pxe = DhcpService(responder, listener.address, listener.interface, listener.proxy_port,
                                  reply_to_source=True)
                self._add(f"proxydhcp{suffix}", pxe.start, self._closer(pxe),
                          f"{listener.interface or 'all interfaces'}:{listener.proxy_port}")

    def _router_advertiser(self, interface: str) -> None:
        from .dhcp.router_advert import RouterAdvertiser

        ra = RouterAdvertiser(interface)

        async def stop() -> None:
            ra.close()

        self._add(f"ipv6-ra {interface}", ra.start, stop, f"{interface}: router solicitations answered, no IPv6")

    @staticmethod
    def _closer(service: DhcpService, leases: LeaseStore | None = None) -> Callable[[], Awaitable[None]]:
        async def stop() -> None:
            service.close()
            if leases is not None:
                leases.close()

        return stop

    def _dhcp_event(self, what: str, fields: dict[str, object]) -> None:
        _log_event("bootsvc.dhcp")(what, fields)
        if what in ("dhcp.discovered", "dhcp.adopted") and self.leases is not None:
            self.leases.saw_unknown(str(fields["mac"]), "discover" if what == "dhcp.discovered" else "default",
                                    time.time(), "" if fields.get("arch") is None else str(fields["arch"]))
        machine = self.cfg.machines.get(str(fields.get("mac")))
        if what == "dhcp.offer" and machine is not None and not fields.get("ipxe"):
            self.disks.new_boot(machine)  # the boot ROM starts a new boot: an ephemeral disk starts fresh

    # -- unknown machines ----------------------------------------------------------------

    def adopt(self, mac: str) -> Machine | None:
        """unknown_machines: default: the MAC becomes a machine with the
        default profile and its own disk, served from now on."""
        profile = self.cfg.default_profile
        if profile is None:  # the config check makes this impossible; stay safe
            return None
        machine = generated_machine(mac, self.cfg.iqn_prefix, profile)
        self.cfg.machines[mac] = machine  # the image store finds its profile through the inventory
        target = self.disks.add(machine)
        if target is None:
            del self.cfg.machines[mac]
            return None
        self.iscsi.targets[target.name] = target
        if self.registration is not None:
            self.registration.changed()
        return machine

    def _with_adopted(self, cfg: config_mod.Config) -> None:
        """Machines adopted before (policy default) are machines again after a
        restart or reload, with the disk they had."""
        if self.leases is None or cfg.dhcp is None or cfg.dhcp.unknown is not UnknownPolicy.DEFAULT \
                or cfg.default_profile is None:
            return
        for mac, policy, *_ in self.leases.unknown_machines():
            if policy == "default" and mac not in cfg.machines:
                cfg.machines[mac] = generated_machine(mac, cfg.iqn_prefix, cfg.default_profile)

    # -- what the front door hands out ---------------------------------------------------

    def server_address(self, client: str, local: str) -> str:
        """Our address as the client reaches it: the socket's own address,
        else the DHCP server address of the client's subnet."""
        if local not in ANY_ADDRESSES:
            return local
        d = self.cfg.dhcp
        if d is not None:
            with contextlib.suppress(ValueError):
                return str(d.server_for(ipaddress.IPv4Address(client)))
        return str(self.cfg.iscsi.portals[0].host) if self.cfg.iscsi.portals else local

    def _generated_text(self, name: str, client: str, local: str) -> str | None:
        mac = mac_of_script(name)
        return None if mac is None else self.planner.script(mac, self.server_address(client, local))

    def _generated(self, name: str, client: str, local: str) -> bytes | None:
        if mac_of_script(name) is None:
            return None
        text = self._generated_text(name, client, local)
        if text is None:
            raise FileNotFoundError(f"{name}: no such machine, or its disk is not served")
        return text.encode()

    def addresses(self) -> dict[str, ipaddress.IPv4Address]:
        """Every machine's address for DNS: its fixed IP, else its lease."""
        out: dict[str, ipaddress.IPv4Address] = {}
        for m in self.cfg.machines.values():
            lease = self.leases.for_mac(m.mac) if self.leases is not None and m.ip is None else None
            ip = m.ip or (lease.ip if lease is not None else None)
            if ip is not None:
                out[m.hostname] = ip
        return out

    def health(self) -> dict[str, str]:
        return {name: "serving" if up else "not started" for name, up in self.running.items()}

    # -- reload ------------------------------------------------------------------------

    async def reload(self) -> str:
        """Re-read the config: machines and targets added, removed or
        changed take effect now; a machine or target with sessions keeps
        its disk until they log out; so do tftp.roots and busy_poll_us.
        Listen addresses need a restart."""
        try:
            new = config_mod.load(self.cfg.path)
        except config_mod.ConfigError as e:
            for p in e.problems:
                self.report(p)
            raise ServeError(f"{len(e.problems)} problem(s) in {self.cfg.path}") from None
        self._with_adopted(new)
        old = self.cfg
        changed = []
        for key in ("http", "dns", "isns"):
            if getattr(new, key) != getattr(old, key):
                changed.append(key)
        if not self._retune_tftp(new.tftp, old.tftp):
            changed.append("tftp")
        if new.iscsi.portals != old.iscsi.portals or (new.dhcp and old.dhcp and (
                new.dhcp.listeners, new.dhcp.mode) != (old.dhcp.listeners, old.dhcp.mode)) \
                or (new.dhcp is None) != (old.dhcp is None):
            changed.append("listen/dhcp mode")
        summary = self.disks.reconfigure(new, self.iscsi)
        extra = self._reconfigure_extra(new)
        # the same objects the responder and planner hold, so they see the change at once
        old.machines.clear()
        old.machines.update(new.machines)
        new.machines = old.machines
        self.cfg = new
        self.planner.cfg = new
        if new.dhcp is not None and self.responder is not None:
            self.responder.subnets = list(new.dhcp.subnets)
            self.responder.unknown = new.dhcp.unknown
        if self.responder is not None:
            self.responder.machines_changed()
        if self.registration is not None:
            self.registration.changed()
        if changed:
            self.report(f"reload: {', '.join(changed)} changed: takes effect at the next restart")
        return f"{len(new.machines)} machine(s); {summary}; {extra}"

    def _retune_tftp(self, new: config_mod.TftpSettings | None, old: config_mod.TftpSettings | None) -> bool:
        """Apply a changed tftp section now: roots (for TFTP and HTTP's
        /files/, with the file cache dropped) and busy_poll_us (from the
        next transfer on). False when it needs a restart: TFTP turned on
        or off, or a new listen address."""
        if new == old:
            return True
        if new is None or old is None or (new.host, new.port) != (old.host, old.port):
            return False
        self.files.set_roots(list(new.roots))
        if self.tftp is not None:
            self.tftp.busy_poll = new.busy_poll
        return True

    def _reconfigure_extra(self, new: config_mod.Config) -> str:
        """The config's own targets: same rules as the machines' disks."""
        wanted = {spec.iqn: spec for spec in new.targets}
        old_specs = {spec.iqn: spec for spec in self.cfg.targets}
        removed = kept = added = 0
        for iqn in [iqn for iqn in self.extra if wanted.get(iqn) != old_specs.get(iqn)]:
            if self.disks.retire(self.extra[iqn], self.iscsi):
                del self.extra[iqn]
                removed += 1
            else:
                kept += 1
                wanted[iqn] = old_specs[iqn]  # still the served one
                self.report(f"target {iqn} changed but is logged in: unchanged until it logs out and "
                            "bootsvc is reloaded")
        for iqn, spec in wanted.items():
            if iqn not in self.extra:
                try:
                    self.extra[iqn] = self.iscsi.targets[iqn] = Target.open(spec)
                    added += 1
                except (TargetConfigError, BackendError, OSError) as e:
                    self.report(f"target {iqn} not served: {e}")
        new.targets = list(wanted.values())
        return f"{added} target(s) added, {removed} removed or changed, {kept} kept while logged in"


def _log_event(logger: str) -> Callable[[str, dict[str, object]], None]:
    """One structured log line per event (DESIGN.md "Events")."""
    out = logging.getLogger(logger)

    def event(what: str, fields: dict[str, object]) -> None:
        out.info("event=%s %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))

    return event


def write_pidfile(state_dir: Path) -> Path:
    """state_dir/bootsvc.pid, for `bootsvc reload`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "bootsvc.pid"
    path.write_text(f"{os.getpid()}\n")
    return path
