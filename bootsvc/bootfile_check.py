"""``bootsvc check``'s word on the iPXE binaries (dhcp.bootfiles): a
machine whose firmware would be sent a file that TFTP and HTTP do not
serve cannot boot, so each such firmware is one warning (not one per
machine: the config does not say which firmware a machine has), with how
to get the file. A warning, not an error: a lab without ARM64 machines
needs no ARM64 iPXE."""

from __future__ import annotations

from collections.abc import Mapping

from .config import Config
from .dhcp.bootfiles import DEFAULT_BOOTFILES, Firmware
from .tftp.files import FileSource

_DEBIAN_IPXE = "Debian: apt install ipxe, which puts it in /usr/lib/ipxe (a TFTP root by default)"
_BUILD = ("Debian's ipxe package has no {what} build: build iPXE's {target} (https://ipxe.org/download) "
          "or take it from another distribution, put it in a TFTP root and set dhcp.bootfiles.{key} to its name")
HOW_TO_GET: Mapping[Firmware, str] = {
    Firmware.BIOS: _DEBIAN_IPXE,
    Firmware.EFI_X64: _DEBIAN_IPXE,
    Firmware.EFI_IA32: _BUILD.format(what="32-bit UEFI", target="bin-i386-efi/snponly.efi", key="efi-ia32"),
    Firmware.EFI_ARM64: _BUILD.format(what="ARM64", target="bin-arm64-efi/snponly.efi", key="efi-arm64"),
}
# firmware Debian's ipxe has no build for: a warning only once the config names a file
NOT_IN_DEBIAN = frozenset({Firmware.EFI_IA32, Firmware.EFI_ARM64})
WHO = {Firmware.BIOS: "BIOS", Firmware.EFI_IA32: "32-bit UEFI", Firmware.EFI_X64: "64-bit UEFI",
       Firmware.EFI_ARM64: "ARM64 UEFI"}


def bootfile_warnings(cfg: Config) -> list[str]:
    """One line per firmware whose boot file is missing; none without DHCP
    (nobody is told a boot file then). Without listen.http, UEFI HTTP-boot
    clients are refused when they ask (a boot.refused event says why):
    most sites have none, so every check does not warn about them."""
    if cfg.dhcp is None:
        return []
    roots = list(cfg.tftp.roots) if cfg.tftp is not None else []
    files = FileSource(roots)
    where = f"in none of the TFTP roots ({', '.join(map(str, roots))}), which TFTP and HTTP's /files/ serve" \
        if roots else "not served: listen.tftp is off, so TFTP and HTTP's /files/ have no roots"
    warnings = []
    for firmware, name in cfg.dhcp.bootfiles.items():
        if firmware in NOT_IN_DEBIAN and name == DEFAULT_BOOTFILES[firmware]:
            continue  # not configured: said when such a machine asks (boot.refused), not in every check
        if not files.has(name):
            warnings.append(f"dhcp.bootfiles.{firmware.value}: {name} is {where}: {WHO[firmware]} machines "
                            f"cannot boot (they get an address, no boot file). {HOW_TO_GET[firmware]}")
    return warnings
