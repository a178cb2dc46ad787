"""QEMU command lines for diskless machines: no disk, one virtio NIC on a
tap device with the machine's MAC, the serial console into a file.

BIOS machines boot through the NIC's iPXE ROM (Debian's ipxe-qemu).
UEFI machines run OVMF with a private copy of its variable store; the
NIC's EFI iPXE ROM boots them the same way, or, with the ROM left out,
OVMF's own PXE client loads iPXE from bootsvc's TFTP first. Acceleration: this machine's
/dev/kvm may be a paravirtual KVM (kvm_pvm) on which firmware dies with
"emulation failure", so ``auto`` picks KVM only where it is a real one."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

QEMU = "qemu-system-x86_64"
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # ipxe-qemu: QEMU's default ROM for virtio-net-pci
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class Firmware(Enum):
    BIOS = "bios"
    UEFI = "uefi"


class QemuError(Exception):
    """QEMU cannot run a machine here; the message says why."""


def pick_accel(choice: str) -> str:
    """``tcg``, ``kvm``, or for ``auto`` KVM only when it is usable and not
    paravirtual (ENVIRONMENT.md: SYSLINUX and iPXE hang on kvm_pvm)."""
    if choice != "auto":
        return choice
    if os.access("/dev/kvm", os.R_OK | os.W_OK) and not os.path.isdir("/sys/module/kvm_pvm"):
        return "kvm"
    return "tcg"


def check(firmware: Firmware) -> None:
    if not shutil.which(QEMU):
        raise QemuError(f"{QEMU} is not installed (Debian: qemu-system-x86)")
    if not IPXE_ROM.exists():
        raise QemuError(f"{IPXE_ROM} is missing (Debian: ipxe-qemu)")
    if firmware is Firmware.UEFI and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        raise QemuError(f"{OVMF_CODE} is missing (Debian: ovmf)")


@dataclass(frozen=True)
class Machine:
    """One diskless VM: what QEMU needs to boot it."""

    name: str
    mac: str
    tap: str
    console: Path  # serial console output
    firmware: Firmware = Firmware.BIOS
    accel: str = "tcg"
    memory_mib: int = 256
    # False: no option ROM on the NIC, so UEFI's own PXE client boots, like
    # a real machine's: it fetches snponly.efi/ipxe.efi over TFTP (arch 7)
    nic_rom: bool = True

    @property
    def variables(self) -> Path:
        """UEFI's variable store of this machine (a copy made at start)."""
        return self.console.with_suffix(".vars.fd")

    def command(self) -> list[str]:
        cmd = [QEMU, "-name", self.name, "-accel", self.accel, "-m", str(self.memory_mib),
               "-display", "none", "-monitor", "none", "-no-reboot", "-serial", f"file:{self.console}",
               "-boot", "n",
               "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}" + ("" if self.nic_rom else ",romfile=")]
        if self.firmware is Firmware.UEFI:
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={self.variables}"]
        return cmd

    def start(self, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """QEMU, inside the boot network's namespace (``prefix``); its own
        messages go to <console>.qemu.log."""
        self.console.unlink(missing_ok=True)
        if self.firmware is Firmware.UEFI:
            shutil.copyfile(OVMF_VARS, self.variables)  # each machine its own, fresh boot variables
        with open(self.console.with_suffix(".qemu.log"), "wb") as err:
            return subprocess.Popen([*prefix, *self.command()], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
