"""Which iPXE binary each client architecture is sent: ``dhcp.bootfiles``
of the config, keyed by firmware (``bios``, ``efi-ia32``, ``efi-x64``,
``efi-arm64``), with Debian's ipxe package names as defaults.

A client names its architecture in option 93 (RFC 4578 §2.1, IANA
"Processor Architecture Types"): PXE clients with one type, UEFI HTTP-boot
clients (UEFI 2.10 §24.7) with another, for the same firmware; both are
sent the same file, over TFTP or HTTP."""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping

from ..tftp.files import check_name
from ..yamlfile import Checker, LineMap
from .message import ClientArch


class Firmware(str, Enum):
    """The firmware a boot file is built for: the keys of ``dhcp.bootfiles``."""

    BIOS = "bios"
    EFI_IA32 = "efi-ia32"
    EFI_X64 = "efi-x64"
    EFI_ARM64 = "efi-arm64"


# undionly.kpxe chains through the PXE ROM's UNDI driver, snponly.efi
# through the UEFI firmware's own network driver (SNP), so it drives any NIC
# the firmware can. (Debian's ipxe.efi, with iPXE's own drivers, is a symlink
# to /boot, outside the TFTP root.) Debian's ipxe has no ARM64 build: the
# name is iPXE's own (bin-arm64-efi/snponly.efi, renamed), for the operator to supply.
DEFAULT_BOOTFILES: Mapping[Firmware, str] = MappingProxyType({
    Firmware.BIOS: "undionly.kpxe",
    Firmware.EFI_IA32: "ipxe-i386.efi",
    Firmware.EFI_X64: "snponly.efi",
    Firmware.EFI_ARM64: "ipxe-arm64.efi",
})

# option 93 values (RFC 4578 §2.1 and the IANA registry): PXE and HTTP boot of each firmware
ARCH_FIRMWARE: Mapping[int, Firmware] = MappingProxyType({
    ClientArch.BIOS: Firmware.BIOS,
    ClientArch.EFI_IA32: Firmware.EFI_IA32,
    ClientArch.EFI_IA32_HTTP: Firmware.EFI_IA32,
    ClientArch.EFI_X64: Firmware.EFI_X64,
    ClientArch.EFI_BC: Firmware.EFI_X64,
    ClientArch.EFI_X64_HTTP: Firmware.EFI_X64,
    ClientArch.EFI_ARM64: Firmware.EFI_ARM64,
    ClientArch.EFI_ARM64_HTTP: Firmware.EFI_ARM64,
})


def firmware_of(arch: int | None) -> Firmware | None:
    """The firmware of an option 93 value; a client without one is a BIOS
    PXE ROM (RFC 4578 §2.1: the option came with UEFI); None for an
    architecture bootsvc has no iPXE for (32-bit ARM, RISC-V, ...)."""
    return Firmware.BIOS if arch is None else ARCH_FIRMWARE.get(arch)


def load_bootfiles(c: Checker, d: LineMap) -> Mapping[Firmware, str]:
    """``dhcp.bootfiles``: a file name per firmware, relative to the TFTP
    roots (HTTP serves the same roots under /files/); firmware left out
    keeps its default."""
    found = dict(DEFAULT_BOOTFILES)
    raw: Any = d.get("bootfiles")
    if raw is None:
        return MappingProxyType(found)
    m = c.mapping(d, "dhcp.bootfiles", raw)
    if m is None:
        return MappingProxyType(found)
    c.unknown(m, {f.value for f in Firmware}, "dhcp.bootfiles.")
    for key, name in m.items():
        if key not in Firmware._value2member_map_:
            continue
        where = f"dhcp.bootfiles.{key}"
        if not isinstance(name, str) or not name.strip():
            c.err(m, where, f"expected a file name in the TFTP roots, like {DEFAULT_BOOTFILES[Firmware(key)]}")
            continue
        try:
            check_name(name)
        except PermissionError as e:
            c.err(m, where, f"{name}: {e}; name a file inside the TFTP roots")
            continue
        found[Firmware(key)] = name
    return MappingProxyType(found)


_DEBIAN_IPXE = "Debian: apt install ipxe, which puts it in /usr/lib/ipxe (a TFTP root by default)"
_BUILD = ("Debian's ipxe package has no {what} build: build iPXE's {target} from its source "
          "or take it from another distribution, put it in a TFTP root and set dhcp.bootfiles.{key} to its name")
HOW_TO_GET: Mapping[Firmware, str] = {  # said by check and by a refusal at boot time
    Firmware.BIOS: _DEBIAN_IPXE,
    Firmware.EFI_X64: _DEBIAN_IPXE,
    Firmware.EFI_IA32: _BUILD.format(what="32-bit UEFI", target="bin-i386-efi/snponly.efi", key="efi-ia32"),
    Firmware.EFI_ARM64: _BUILD.format(what="ARM64", target="bin-arm64-efi/snponly.efi", key="efi-arm64"),
}
# firmware Debian's ipxe has no build for: `bootsvc check` warns only once the config names a file
NOT_IN_DEBIAN = frozenset({Firmware.EFI_IA32, Firmware.EFI_ARM64})
WHO = {Firmware.BIOS: "BIOS", Firmware.EFI_IA32: "32-bit UEFI", Firmware.EFI_X64: "64-bit UEFI",
       Firmware.EFI_ARM64: "ARM64 UEFI"}
