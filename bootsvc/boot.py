"""What a booting machine is told to load (DESIGN.md "The boot flow"):
a PXE ROM gets iPXE for its architecture over TFTP; iPXE itself gets the
iSCSI root-path of the machine's own target and its initiator name, after
checking that the target and its LUN are really served."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .config import Config
from .dhcp.message import ClientArch, IPv4, Request
from .dhcp.responder import BootOptions
from .disks import MachineDisks
from .inventory import Machine
from .profiles import BootMethod

log = logging.getLogger("bootsvc.boot")

# Debian's ipxe package names; undionly.kpxe chains through the PXE ROM's
# UNDI driver, ipxe.efi carries its own NIC drivers
BOOTFILES = {
    ClientArch.BIOS: "undionly.kpxe",
    ClientArch.EFI_IA32: "ipxe-i386.efi",
    ClientArch.EFI_X64: "ipxe.efi",
    ClientArch.EFI_BC: "ipxe.efi",
    ClientArch.EFI_ARM64: "ipxe-arm64.efi",
}


@dataclass
class BootPlanner:
    cfg: Config
    disks: MachineDisks
    iscsi_port: int = 3260
    bootfiles: dict[int, str] = field(default_factory=lambda: dict(BOOTFILES))

    def __call__(self, req: Request, machine: Machine | None, server: IPv4) -> BootOptions | None:
        if not req.ipxe:
            name = self.bootfiles.get(req.arch if req.arch is not None else ClientArch.BIOS)
            if name is None:
                log.warning("event=boot.refused mac=%s why=no iPXE build for client architecture %s",
                            req.mac, req.arch)
                return None
            return BootOptions(bootfile=name, next_server=server)
        if machine is None:
            return None
        profile = self.cfg.profiles[machine.profile]
        if profile.boot is not BootMethod.SANBOOT:
            log.warning("event=boot.refused host=%s why=boot method %s needs the HTTP service (not yet)",
                        machine.hostname, profile.boot.value)
            return None
        target = self.disks.targets.get(machine.mac)
        if target is None or 0 not in target.luns or not target.allows(machine.initiator_iqn):
            # a clear refusal instead of a root-path to nothing: iPXE reports "no boot target"
            log.warning("event=boot.refused host=%s why=its disk is not served (see bootsvc serve's start lines)",
                        machine.hostname)
            return None
        return BootOptions(root_path=f"iscsi:{server}::{self.iscsi_port}::{machine.target_iqn}",
                           initiator_iqn=machine.initiator_iqn, ipxe_no_pxedhcp=True)
