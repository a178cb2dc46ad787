"""The boot disks of the inventory's machines as the running server holds
them: one target per machine on its overlay, and the overlay's lifecycle
(an ephemeral profile's overlay is made anew at each new boot)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from target.backend import BackendError
from target.targets import Target, TargetConfigError, TargetSpec, open_backend

from .images import ImageError, ImageStore
from .inventory import Machine
from .profiles import OverlayPolicy

log = logging.getLogger("bootsvc.disks")


class MachineDisks:
    def __init__(self, store: ImageStore, report: Callable[[str], None] = log.warning) -> None:
        self.store = store
        self.report = report
        self.targets: dict[str, Target] = {}  # by MAC
        self.specs: dict[str, TargetSpec] = {}

    def open(self) -> list[Target]:
        """Every machine's target; a machine whose disk cannot be made is
        reported in one line and left out, the others are served."""
        for mac, machine in self.store.cfg.machines.items():
            try:
                spec = self.store.prepare(machine)
                self.targets[mac] = Target.open(spec)
                self.specs[mac] = spec
            except (ImageError, TargetConfigError, BackendError) as e:
                self.report(f"{machine.hostname} will not boot: {e}")
        return list(self.targets.values())

    def new_boot(self, machine: Machine) -> bool:
        """A machine starts booting (its boot ROM asks DHCP for an address):
        an ephemeral overlay is made anew, unless the machine still has a
        session open. True when the disk was renewed."""
        target = self.targets.get(machine.mac)
        if target is None or self.store.profile(machine).overlay is not OverlayPolicy.EPHEMERAL:
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
