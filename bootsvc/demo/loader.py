"""The boot partition's files for one Linux kernel: SYSLINUX's config for
BIOS machines, systemd-boot (EFI/BOOT/BOOTX64.EFI) and its entry for UEFI
ones, and a copy of the kernel and initramfs in state_dir/boot for
profiles with ``boot: kernel``. Shared by the demo and the Debian image."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")  # systemd-boot-efi


def boot_files(work: Path, vmlinuz: Path, initrd: Path, args: str, label: str,
               say: Callable[[str], None] = print) -> dict[str, Path]:
    """Path on the FAT boot partition -> file here: the kernel, the
    initramfs, and both boot loaders' configs (written into ``work``) that
    start them with the command line ``args``. Without systemd-boot-efi
    the disk boots on BIOS only, which ``say`` tells."""
    work.mkdir(parents=True, exist_ok=True)
    files = {"vmlinuz": vmlinuz, "initrd.img": initrd, "syslinux.cfg": work / "syslinux.cfg",
             "loader/loader.conf": work / "loader.conf", f"loader/entries/{label}.conf": work / f"{label}.conf"}
    files["syslinux.cfg"].write_text(f"DEFAULT {label}\nPROMPT 0\nTIMEOUT 0\nLABEL {label}\n"
                                     f"  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {args}\n")
    files["loader/loader.conf"].write_text(f"default {label}.conf\ntimeout 0\n")
    files[f"loader/entries/{label}.conf"].write_text(
        f"title bootsvc {label}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {args}\n")
    if SYSTEMD_BOOT.is_file():
        files["EFI/BOOT/BOOTX64.EFI"] = SYSTEMD_BOOT
    else:
        say(f"  ({SYSTEMD_BOOT} is missing: install systemd-boot-efi for UEFI machines; BIOS only)")
    return files


def publish_kernel(files: dict[str, Path], dest: Path) -> None:
    """The kernel and initramfs of ``files`` copied to ``dest``, where a
    profile with ``boot: kernel`` finds them (served from state_dir/boot,
    a default TFTP/HTTP root)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("vmlinuz", "initrd.img"):
        shutil.copyfile(files[f], dest / f)
