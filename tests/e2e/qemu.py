"""QEMU for end-to-end tests: software emulation (TCG) by default since this
machine's KVM is paravirtual and cannot run firmware (ENVIRONMENT.md);
BOOTSVC_ACCEL=kvm forces KVM. The serial console goes to a file that the
test follows with a bounded wait; QEMU is ended by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bootsvc.vm import qemu as vmqemu

QEMU = "qemu-system-x86_64"
# QEMU finds the NIC's iPXE ROM itself (Debian's ipxe-qemu); naming it with
# romfile= here left SeaBIOS without a network boot entry
VIRTIO_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


def available() -> str | None:
    """None when QEMU can boot here, else the reason it cannot."""
    if not shutil.which(QEMU):
        return f"{QEMU} is not installed"
    if not VIRTIO_ROM.exists():
        return f"{VIRTIO_ROM} (ipxe-qemu) is missing"
    return None


@contextlib.contextmanager
def _vm(log: Path, memory: int, *args: str, prefix: tuple[str, ...] = (), qemu: str = QEMU) -> Iterator[Path]:
    """QEMU with its serial console in ``log``, killed by its PID on exit."""
    accel = os.environ.get("BOOTSVC_ACCEL", "tcg")
    proc = subprocess.Popen(
        [*prefix, qemu, "-accel", accel, "-m", str(memory), "-display", "none", "-no-reboot",
         "-serial", f"file:{log}", "-monitor", "none", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def sanboot_vm(workdir: Path, target_port: int, iqn: str, lun: int) -> contextlib.AbstractContextManager[Path]:
    """A diskless VM whose NIC's iPXE ROM sanboots ``iqn`` from a target on
    127.0.0.1:``target_port``. QEMU's user network is ``restrict=on``: the
    guest reaches nothing but the one forwarded address, 10.0.2.100:3260,
    which QEMU connects to the loopback target. Its IPv6 is on only for its
    router advertisement: iPXE otherwise waits 16 s for one (ENVIRONMENT.md).
    Yields the console log."""
    tftp = workdir / "tftp"
    tftp.mkdir(exist_ok=True)
    (tftp / "boot.ipxe").write_text(f"#!ipxe\nsanboot iscsi:10.0.2.100::3260:{lun}:{iqn}\n")
    # a "-tcp:" guestfwd would be one connection opened when QEMU starts;
    # "-cmd:" runs the proxy for every connection the guest makes
    proxy = f"{sys.executable} {Path(__file__).with_name('stdio_proxy.py')} {target_port}"
    nic = (f"user,model=virtio-net-pci,restrict=on,tftp={tftp},bootfile=boot.ipxe,"
           f"guestfwd=tcp:10.0.2.100:3260-cmd:{proxy}")
    return _vm(workdir / "console.log", 256, "-boot", "n", "-nic", nic)


def disk_vm(workdir: Path, disk: Path, fmt: str = "qcow2") -> contextlib.AbstractContextManager[Path]:
    """A VM booting ``disk`` as its local hard disk, without a network.
    Yields the console log."""
    return _vm(workdir / "console.log", 128, "-boot", "c", "-nic", "none",
               "-drive", f"file={disk},format={fmt},if=ide")


@contextlib.contextmanager
def netboot_vm(workdir: Path, ns: str, tap: str, mac: str) -> Iterator[Path]:
    """A diskless VM inside network namespace ``ns`` whose NIC (its iPXE
    ROM) is the tap device ``tap`` with ``mac``: it boots whatever DHCP on
    that network tells it. The command line is `bootsvc vm`'s own. Yields
    the console log."""
    vm = vmqemu.Machine(mac, mac, tap, workdir / f"console-{mac.replace(':', '')}.log",
                        accel=os.environ.get("BOOTSVC_ACCEL", "tcg"))
    proc = vm.start(("ip", "netns", "exec", ns))
    try:
        yield vm.console
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@dataclass(frozen=True)
class Uefi:
    """A UEFI firmware of Debian's and the QEMU that runs it."""

    qemu: str
    code: Path
    variables: Path
    machine: tuple[str, ...] = ()

    def missing(self) -> str | None:
        if not shutil.which(self.qemu):
            return f"{self.qemu} is not installed"
        if not (self.code.exists() and self.variables.exists()):
            return f"{self.code} is missing"
        return None


OVMF = Uefi(QEMU, vmqemu.OVMF_CODE, vmqemu.OVMF_VARS)  # Debian: ovmf
# Debian: qemu-efi-aarch64 and qemu-system-arm; TCG (this host is x86), 64 MiB flash images
AAVMF = Uefi("qemu-system-aarch64", Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.fd"),
             ("-M", "virt", "-cpu", "cortex-a57"))
# OVMF's boot menu has PXEv4, PXEv6, HTTPv4 and HTTPv6 entries per NIC, in
# that order; these fw_cfg knobs (OvmfPkg, PcdIPv4PXESupport) leave PXE out,
# so the NIC boots over UEFI HTTP first
NO_PXE = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
          "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no")


def uefi_netboot_vm(workdir: Path, ns: str, tap: str, mac: str, firmware: Uefi,
                    *extra: str) -> contextlib.AbstractContextManager[Path]:
    """A diskless UEFI VM in namespace ``ns`` on tap ``tap``, its NIC
    without an option ROM: the firmware's own network boot (PXE, or HTTP
    boot with NO_PXE in ``extra``) runs, as on a real machine. Yields the
    console log."""
    variables = workdir / f"vars-{mac.replace(':', '')}.fd"
    shutil.copyfile(firmware.variables, variables)  # fresh boot variables each run
    return _vm(workdir / f"console-{mac.replace(':', '')}.log", 256, *firmware.machine,
               "-drive", f"if=pflash,format=raw,readonly=on,file={firmware.code}",
               "-drive", f"if=pflash,format=raw,file={variables}",
               "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1", *extra,
               prefix=("ip", "netns", "exec", ns), qemu=firmware.qemu)


def wait_for(log: Path, markers: tuple[str, ...], timeout: float) -> str | None:
    """The first marker that appears in the log within ``timeout`` s, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for m in markers:
            if m in text:
                return m
        time.sleep(0.2)
    return None
