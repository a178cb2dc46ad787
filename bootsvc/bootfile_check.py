"""``bootsvc check``'s word on the iPXE binaries (dhcp.bootfiles): a
machine whose firmware would be sent a file that TFTP and HTTP do not
serve cannot boot, so each such firmware is one warning (not one per
machine: the config does not say which firmware a machine has), with how
to get the file. A warning, not an error: a lab without ARM64 machines
needs no ARM64 iPXE."""

from __future__ import annotations

from .config import Config
from .dhcp.bootfiles import DEFAULT_BOOTFILES, HOW_TO_GET, NOT_IN_DEBIAN, WHO
from .tftp.files import FileSource


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
