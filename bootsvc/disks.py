"""The boot disks of the inventory's machines as the running server holds
them: one target per machine on its overlay, and the overlay's lifecycle
(an ephemeral profile's overlay is made anew at each new boot)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from target.backend import BackendError
from target.server import TargetServer
from target.targets import Target, TargetConfigError, TargetSpec, open_backend

from .config import Config
from .images import ImageError, ImageStore
from .inventory import Machine
from .profiles import OverlayPolicy, Profile

log = logging.getLogger("bootsvc.disks")


class MachineDisks:
    def __init__(self, store: ImageStore, report: Callable[[str], None] = log.warning) -> None:
        self.store = store
        self.report = report
        self.targets: dict[str, Target] = {}  # by MAC
        self.specs: dict[str, TargetSpec] = {}
        self.machines: dict[str, tuple[Machine, Profile]] = {}  # what each target was made from
        self.unused: set[str] = set()  # MACs whose disk no boot has used yet

    def open(self) -> list[Target]:
        """Every machine's target; a machine whose disk cannot be made is
        reported in one line and left out, the others are served."""
        for machine in self.store.cfg.machines.values():
            self._open(machine)
        return list(self.targets.values())

    def add(self, machine: Machine) -> Target | None:
        """Serve one more machine's disk (an adopted unknown machine); None,
        and a report, if its disk cannot be made."""
        return self._open(machine)

    def _open(self, machine: Machine) -> Target | None:
        try:
            spec = self.store.prepare(machine)
            target = self.targets[machine.mac] = Target.open(spec)
            self.unused.add(machine.mac)
            self.specs[machine.mac] = spec
            self.machines[machine.mac] = (machine, self.store.profile(machine))
            return target
        except (ImageError, TargetConfigError, BackendError) as e:
            self.report(f"{machine.hostname} will not boot: {e}")
            return None

    def reconfigure(self, cfg: Config, server: TargetServer) -> str:
        """Apply a re-read config to the served machines: new ones get their
        target, removed ones lose it, changed ones (profile, names, IQNs) get
        a new one; a machine still logged in keeps its disk until a later
        reload finds it logged out."""
        self.store = ImageStore(cfg)
        added = removed = kept = 0
        for mac in list(self.targets):
            machine = cfg.machines.get(mac)
            current = (machine, self.store.profile(machine)) if machine is not None else None
            if current == self.machines.get(mac):
                continue
            target = self.targets[mac]
            if target.sessions:
                kept += 1
                self.report(f"{self.machines[mac][0].hostname} changed but is logged in: "
                            f"its disk stays as it is until it logs out and bootsvc is reloaded")
                continue
            del self.targets[mac], self.specs[mac], self.machines[mac]
            server.targets.pop(target.name, None)
            target.close()
            removed += 1
        for mac, machine in cfg.machines.items():
            if mac not in self.targets and (target := self._open(machine)) is not None:
                server.targets[target.name] = target
                added += 1
        return f"{added} disk(s) added, {removed} removed or changed, {kept} kept while logged in"

    @staticmethod
    def retire(target: Target, server: TargetServer) -> bool:
        """Stop serving a target; closed now unless logged in (False)."""
        if target.sessions:
            return False
        server.targets.pop(target.name, None)
        target.close()
        return True

    def new_boot(self, machine: Machine) -> bool:
        """A machine starts booting (its boot ROM asks DHCP for an address):
        an ephemeral overlay is made anew, unless the machine still has a
        session open. True when the disk was renewed."""
        target = self.targets.get(machine.mac)
        if target is None or self.store.profile(machine).overlay is not OverlayPolicy.EPHEMERAL:
            return False
        if machine.mac in self.unused:  # made for this very boot (at start or adoption): fresh already
            self.unused.discard(machine.mac)
            return False
        if target.sessions:
            log.warning("event=disk.kept host=%s why=sessions still logged in", machine.hostname)
            return False
        spec = self.specs[machine.mac]
        lun = target.luns[0]
        lun.backend.close()
        try:
            self.store.reset(machine.hostname)
        finally:
            # reopened even if the reset failed: the machine keeps a disk
            lun.backend = open_backend(spec.luns[0])
        log.info("event=disk.renewed host=%s", machine.hostname)
        return True
