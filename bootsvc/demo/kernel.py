"""Debian's cloud kernel for the demo image: its package fetched once into a
cache, unpacked (never installed on the build machine), and the modules an
iSCSI-booted machine needs picked with everything they depend on.

The cloud flavour is small and has what a VM booting from iSCSI needs as
modules (iscsi_tcp, iscsi_ibft, virtio_net, sd_mod); ext4 is built in."""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from .tools import BuildError, run

META_PACKAGE = "linux-image-cloud-amd64"
APT_ARCHIVES = Path("/var/cache/apt/archives")

# What the initramfs loads, in this order (dependencies are added first):
# the NICs the cloud kernel has drivers for (virtio, VMware's vmxnet3; it
# has no e1000, so the demo machines need a virtio NIC), the iBFT reader,
# the iSCSI initiator and SCSI disks.
ROOT_MODULES = ("virtio_pci", "virtio_net", "vmxnet3", "iscsi_ibft", "iscsi_tcp", "sd_mod")


class KernelError(BuildError):
    """The kernel could not be fetched or unpacked; the message says why."""


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. 6.1.0-56-cloud-amd64
    root: Path    # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _package_name() -> str | None:
    """The versioned kernel package the meta package points at now."""
    try:
        out = run("apt-cache", "depends", "--important", META_PACKAGE, timeout=60, error=KernelError)
    except KernelError:
        return None
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-cloud-amd64)", out)
    return m.group(1) if m else None


def fetch_deb(cache: Path, deb: Path | None = None) -> Path:
    """The kernel package: ``deb`` if given, else one already in ``cache``,
    else downloaded with apt-get, else the newest in apt's own archive."""
    if deb is not None:
        if not deb.is_file():
            raise KernelError(f"{deb}: no such kernel package")
        return deb
    cache.mkdir(parents=True, exist_ok=True)
    name = _package_name()
    if name:
        have = sorted(cache.glob(f"{name}_*.deb"))
        if have:
            return have[-1]
        try:
            run("apt-get", "download", name, cwd=cache, error=KernelError)
        except KernelError as e:
            error: KernelError | None = e
        else:
            error = None
        have = sorted(cache.glob(f"{name}_*.deb"))
        if have:
            return have[-1]
    else:
        error = KernelError(f"apt does not know {META_PACKAGE} (run apt-get update?)")
    local = sorted(APT_ARCHIVES.glob("linux-image-*-cloud-amd64_*.deb"))
    if local:
        shutil.copy2(local[-1], cache / local[-1].name)
        return cache / local[-1].name
    raise KernelError(f"no Debian cloud kernel package: {error}; pass one with --kernel-deb")


def unpack(deb: Path, dest: Path) -> Kernel:
    """Unpack ``deb`` into ``dest`` (reused when already there)."""
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        run("dpkg-deb", "-x", str(deb), str(dest), error=KernelError)
        (dest / ".complete").write_text(deb.name + "\n")
    found = sorted((dest / "boot").glob("vmlinuz-*"))
    if not found:
        raise KernelError(f"{deb.name} holds no /boot/vmlinuz-*: not a kernel image package")
    return Kernel(found[-1].name.removeprefix("vmlinuz-"), dest)


def modinfo(ko: Path) -> dict[str, str]:
    """The ``key=value`` strings of a module's .modinfo ELF section (what
    modinfo(8) prints; read here so the build needs no kmod)."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise KernelError(f"{ko.name}: not a 64-bit little-endian ELF module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if data[names_at + name:data.index(b"\0", names_at + name)] == b".modinfo":
            pairs = (item.partition(b"=") for item in data[offset:offset + size].split(b"\0") if b"=" in item)
            return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}
    return {}


def _depends(ko: Path) -> list[str]:
    return [d for d in modinfo(ko).get("depends", "").split(",") if d]


def module_closure(kernel: Kernel, roots: tuple[str, ...] = ROOT_MODULES) -> list[Path]:
    """The .ko files for ``roots`` and their dependencies, each after what it
    needs (insmod order). Modules built into the kernel are left out;
    unknown ones are an error so a kernel change is noticed at build time."""
    files = {p.name.removesuffix(".ko").replace("-", "_"): p for p in kernel.modules_dir.rglob("*.ko")}
    builtin = set()
    builtin_list = kernel.modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {Path(line).name.removesuffix(".ko").replace("-", "_")
                   for line in builtin_list.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise KernelError(f"kernel {kernel.release} has no module {name}")
        for dep in _depends(files[name]):
            visit(dep)
        order.append(files[name])

    for root in roots:
        visit(root)
    return order
