"""``bootsvc image build-demo``: the demo base image, built once into
state_dir/images and reused. The kernel package is kept in
state_dir/cache/demo so a rebuild needs no download."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..events import Kind
from ..images import ImageError, ImageStore
from .disk import Layout, build_disk
from .initramfs import build_initramfs, build_root_tree
from .kernel import fetch_deb, unpack
from .loader import boot_files, publish_kernel
from .tools import BuildError

DEMO_BASE = "demo-linux.qcow2"  # what profiles/demo-linux.yaml boots
MARKER_OK = "BOOTSVC-DEMO-OK"
MARKER_FAIL = "BOOTSVC-DEMO-FAIL"
RECORD = "/var/lib/bootsvc-demo/boots"  # the file each boot appends to, on the root partition
# quiet: the serial console carries the demo's own progress lines, and
# under TCG every console line costs time; panic=-1 ends a failed boot;
# no_timer_check: a VM emulated on a busy host can miss the kernel's
# IO-APIC timer test and panic ("IO-APIC + timer doesn't work", seen in
# the suite's UEFI boot), the check that option skips (kernel-parameters.txt)
KERNEL_ARGS = "console=ttyS0,115200 quiet panic=-1 no_timer_check"


class DemoImageError(Exception):
    """The demo image cannot be built; the message says why and what to do."""


def boot_dir(cfg: Config, name: str = DEMO_BASE) -> Path:
    """Where the demo's kernel and initramfs go: state_dir/boot/<name stem>."""
    return cfg.state_dir / "boot" / Path(name).name.split(".")[0]


def build_demo(cfg: Config, name: str = DEMO_BASE, force: bool = False, kernel_deb: Path | None = None,
               say: Callable[[str], None] = print) -> Path:
    """The demo base image, built unless it is there already (``force``:
    build it again; refused while overlays depend on it)."""
    store = ImageStore(cfg)
    dest = store.base_path(name)
    if dest.exists() and not force:
        say(f"{dest} is already built (--force builds it again)")
        return dest
    cache = cfg.state_dir / "cache" / "demo"
    work = cache / "work"
    steps = 6
    started = time.monotonic()

    def step(n: int, what: str) -> None:
        say(f"[{n}/{steps}] {what}")

    try:
        if dest.exists():
            store.refuse_if_used(dest)  # before minutes of work, not after
        step(1, "Debian cloud kernel package")
        deb = fetch_deb(cache / "debs", kernel_deb)
        step(2, f"unpacking {deb.name}")
        kernel = unpack(deb, cache / "kernel" / deb.stem)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        step(3, f"initramfs: busybox, iscsistart, modules of {kernel.release}")
        initrd = work / "initrd.img"
        initrd.write_bytes(build_initramfs(kernel))
        boot = boot_files(work / "boot", kernel.vmlinuz, initrd, KERNEL_ARGS, "demo", say)
        step(4, "root file system")
        build_root_tree(work / "root")
        step(5, "disk: MBR, FAT boot partition with SYSLINUX and systemd-boot, ext4 root")
        raw = work / "demo.raw"
        build_disk(raw, Layout(), boot, work / "root")
        step(6, f"storing it as {dest}, its kernel and initramfs in {boot_dir(cfg, name)}")
        store.add_base(raw, name, replace=force)
        publish_kernel(boot, boot_dir(cfg, name))
    except (BuildError, ImageError, OSError) as e:
        raise DemoImageError(str(e)) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.bus.emit(Kind.IMAGE_DEMO_BUILT, base=str(dest), kernel=kernel.release,
                   seconds=round(time.monotonic() - started, 1))
    say(f"built {dest} (kernel {kernel.release}) in {time.monotonic() - started:.0f} s")
    return dest
