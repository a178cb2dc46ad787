"""What runs inside the demo machine: the initramfs (busybox, iscsistart
with its libraries, the kernel modules, init-initramfs.sh as /init) and
the root file system tree (busybox, init-root.sh as /sbin/init)."""

from __future__ import annotations

import functools
import gzip
import io
import re
import shutil
from importlib import resources
from pathlib import Path

from .cpio import CpioWriter
from .kernel import Kernel, module_closure
from .tools import BuildError, run

BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries to carry
ISCSISTART = Path("/usr/sbin/iscsistart")  # open-iscsi
SKELETON = ("bin", "sbin", "dev", "proc", "sys", "root", "etc", "tmp", "run", "var", "mnt")


class InitramfsError(BuildError):
    """A piece of the demo system is missing on the build machine."""


def script(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _need(path: Path, package: str) -> Path:
    if not path.is_file():
        raise InitramfsError(f"{path} is missing: install Debian's {package} package")
    return path


@functools.cache
def applets() -> tuple[str, ...]:
    """busybox's applet names, each to become a symlink to it (asked once:
    the initramfs and the root both get them)."""
    out = run(str(_need(BUSYBOX, "busybox-static")), "--list", timeout=30, error=InitramfsError)
    return tuple(a for a in out.split() if a not in ("busybox", "init", "linuxrc"))


def libraries(binary: Path) -> list[Path]:
    """The shared libraries ``binary`` loads (and the loader), from ldd."""
    out = run("ldd", str(binary), timeout=30, error=InitramfsError)
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    if not libs:
        raise InitramfsError(f"ldd found no libraries for {binary}: {out.strip()}")
    return libs


def build_initramfs(kernel: Kernel) -> bytes:
    """The gzip-compressed newc archive the kernel unpacks as its first root."""
    raw = io.BytesIO()
    cpio = CpioWriter(raw)
    for d in SKELETON:
        cpio.directory(d)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in applets():
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", script("init-initramfs.sh"), 0o755)
    iscsistart = _need(ISCSISTART, "open-iscsi")
    cpio.file("sbin/iscsistart", iscsistart.read_bytes(), 0o755)
    made = set(SKELETON)
    for lib in libraries(iscsistart):
        real = lib.resolve()
        parts = lib.parent.relative_to("/").parts
        for i in range(1, len(parts) + 1):  # /lib64, /lib/x86_64-linux-gnu, ...
            d = "/".join(parts[:i])
            if d not in made:
                cpio.directory(d)
                made.add(d)
        cpio.file(str(lib.relative_to("/")), real.read_bytes(), 0o755)
    cpio.directory("lib/modules")
    order = []
    for ko in module_closure(kernel):
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes())
        order.append(ko.name)
    cpio.file("etc/modules.order", ("\n".join(order) + "\n").encode())
    cpio.close()
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def build_root_tree(dest: Path) -> None:
    """The root file system's files, in ``dest`` (mke2fs -d copies them)."""
    shutil.rmtree(dest, ignore_errors=True)
    for d in SKELETON:
        (dest / d).mkdir(parents=True)
    (dest / "var" / "lib" / "bootsvc-demo").mkdir(parents=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in applets():
        (dest / "bin" / applet).symlink_to("busybox")
    init = dest / "sbin" / "init"
    init.write_bytes(script("init-root.sh"))
    init.chmod(0o755)
    (dest / "etc" / "os-release").write_text('NAME="bootsvc demo"\nID=bootsvc-demo\n')
