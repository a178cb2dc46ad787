"""The demo disk, laid out without mounting anything (so no loop devices or
root-only steps): an MBR with SYSLINUX's boot code, partition 1 a FAT16
boot partition (SYSLINUX installed through mtools for BIOS, systemd-boot
as EFI/BOOT/BOOTX64.EFI for UEFI, kernel, initramfs), partition 2 an ext4
root made by ``mke2fs -d`` at its offset. UEFI firmware reads FAT file
systems on MBR partitions too, so one partition serves both."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .tools import BuildError, run

SECTOR = 512
MIB = 1 << 20
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")  # syslinux-common
ROOT_LABEL = "bootsvc-root"  # init-initramfs.sh finds the root by it


class DiskError(BuildError):
    """A disk-building tool is missing or failed; the message says which."""


def _tool(*cmd: str) -> None:
    run(*cmd, timeout=300, error=DiskError)


@dataclass(frozen=True)
class Partition:
    start: int  # bytes
    size: int   # bytes
    type: int   # MBR partition type
    bootable: bool = False

    def entry(self) -> bytes:
        """A 16-byte MBR partition entry. CHS is left at the "use LBA"
        maximum: every BIOS (and iPXE's INT 13h) reads by LBA here."""
        return struct.pack("<B3sB3sII", 0x80 if self.bootable else 0, b"\xfe\xff\xff", self.type,
                           b"\xfe\xff\xff", self.start // SECTOR, self.size // SECTOR)


@dataclass(frozen=True)
class Layout:
    size: int = 512 * MIB
    boot_size: int = 64 * MIB

    @property
    def boot(self) -> Partition:
        return Partition(MIB, self.boot_size, 0x0E, bootable=True)  # FAT16 (LBA)

    @property
    def root(self) -> Partition:
        start = MIB + self.boot_size
        return Partition(start, self.size - start, 0x83)


def write_mbr(path: Path, layout: Layout) -> None:
    """Boot code (440 bytes), disk signature, two partitions, 0x55AA."""
    if not SYSLINUX_MBR.is_file():
        raise DiskError(f"{SYSLINUX_MBR} is missing: install Debian's syslinux-common package")
    code = SYSLINUX_MBR.read_bytes()[:440].ljust(440, b"\0")
    mbr = code + struct.pack("<IH", 0x0B5B0075, 0) + layout.boot.entry() + layout.root.entry() \
        + bytes(32) + b"\x55\xaa"
    with open(path, "r+b") as f:
        f.write(mbr)


def make_boot_partition(path: Path, layout: Layout, files: dict[str, Path]) -> None:
    """FAT16 at partition 1 holding ``files`` (path on the partition ->
    file here), with SYSLINUX installed in its boot sector."""
    part = layout.boot
    sectors = part.start // SECTOR
    # -h: hidden sectors = the partition's offset, which SYSLINUX needs to
    # find its ldlinux.sys by LBA on the whole disk
    _tool("mkfs.vfat", f"--offset={sectors}", "-h", str(sectors), "-F", "16", "-n", "BOOTSVC", str(path),
        str(part.size // 1024))
    image = f"{path}@@{part.start}"
    dirs = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
    if dirs:
        _tool("mmd", "-i", image, *(f"::/{d}" for d in dirs))
    for name, source in files.items():
        _tool("mcopy", "-o", "-i", image, str(source), f"::/{name}")
    _tool("syslinux", "--offset", str(part.start), "--install", str(path))


def make_root_partition(path: Path, layout: Layout, tree: Path) -> None:
    part = layout.root
    _tool("mke2fs", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-E", f"offset={part.start},root_owner=0:0",
        "-d", str(tree), str(path), f"{part.size // 1024}k")


def build_disk(path: Path, layout: Layout, boot_files: dict[str, Path], root_tree: Path) -> None:
    """The whole raw disk at ``path`` (sparse)."""
    with open(path, "wb") as f:
        f.truncate(layout.size)
    write_mbr(path, layout)
    make_boot_partition(path, layout, boot_files)
    make_root_partition(path, layout, root_tree)
