"""``bootsvc image build-debian``: a Debian 12 base image that boots
diskless from its iSCSI disk with systemd. debootstrap installs Debian's
packages into a directory under state_dir/cache (its downloads kept there
too), bootsvc writes its configuration into that tree (tree.py), the
initramfs is made again inside it, and the disk is laid out as the demo's
(disk.py, loader.py): no loop device, no mount of the image."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..demo.build import boot_dir
from ..demo.disk import MIB, Layout, build_disk
from ..demo.loader import boot_files, publish_kernel
from ..demo.tools import BuildError
from ..images import ImageError, ImageStore
from . import mirror, tree
from .login import LoginError, RootLogin

DEBIAN_BASE = "debian12.qcow2"  # what profiles/debian12.yaml boots
SUITE = "bookworm"
# what a diskless systemd machine needs beyond debootstrap's minbase:
# the kernel, initramfs-tools with open-iscsi's iBFT login (busybox for its
# default route, zstd for the initramfs), systemd as init, ifupdown as
# Debian's network management, and sshd
PACKAGES = ("linux-image-amd64", "systemd-sysv", "initramfs-tools", "open-iscsi", "busybox", "zstd", "udev",
            "kmod", "ifupdown", "isc-dhcp-client", "iproute2", "netbase", "procps", "openssh-server")
DEFAULT_SIZE = 4 << 30
BOOT_SIZE = 128 * MIB  # kernel and initramfs of the generic kernel, with room for a second pair
DEBOOTSTRAP_TIMEOUT = 3600.0  # seconds, downloads included
STAMP = ".bootsvc-debootstrap"  # in the tree: what it was made from, to reuse it


class DebianImageError(Exception):
    """The Debian image cannot be built; the message says why and what to do."""


def _stream(cmd: list[str], say: Callable[[str], None], timeout: float) -> None:
    """Run ``cmd``, passing its output lines on (progress); its last lines
    go into the error when it fails or takes longer than ``timeout`` s."""
    tail: deque[str] = deque(maxlen=15)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
    except FileNotFoundError as e:
        raise DebianImageError(f"{cmd[0]} is not installed") from e
    assert proc.stdout is not None
    # a silent hang ends too: the watchdog kills it and what it started
    # (its own process group: they hold the output pipe open)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        with proc:
            try:
                for line in proc.stdout:
                    tail.append(line.rstrip())
                    say(f"  {line.rstrip()}")
            except BaseException:  # Ctrl-C: it is in its own session, so end it here
                os.killpg(proc.pid, signal.SIGKILL)
                raise
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise DebianImageError(f"{cmd[0]} took more than {timeout:.0f} s")
    if proc.returncode != 0:
        raise DebianImageError(f"{' '.join(cmd[:2])} ... failed (status {proc.returncode}):\n  "
                               + "\n  ".join(tail))


def check_host() -> None:
    """What the build needs of the machine it runs on."""
    if shutil.which("debootstrap") is None:
        raise DebianImageError("debootstrap is not installed: apt install debootstrap")
    if os.geteuid() != 0:
        raise DebianImageError("debootstrap installs Debian's packages as root: run this as root")


def _unmount_below(root: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted inside ``root``
    (it mounts /proc and /sys there for package scripts), deepest first."""
    below = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(f"{root}/"):
                below.append(point)
    for point in sorted(below, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


def debootstrap(root: Path, debs: Path, uri: str, packages: list[str], say: Callable[[str], None]) -> None:
    """Debian's minbase plus ``packages`` in ``root``; a tree already made
    from the same suite, mirror and packages is reused."""
    stamp = f"{SUITE} {uri} {','.join(packages)}\n"
    if (root / STAMP).is_file() and (root / STAMP).read_text() == stamp:
        say(f"  reusing {root} (remove it to install afresh)")
        return
    if root.exists():
        _unmount_below(root)
        shutil.rmtree(root)
    debs.mkdir(parents=True, exist_ok=True)
    try:
        _stream(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={','.join(packages)}",
                 SUITE, str(root), uri], say, DEBOOTSTRAP_TIMEOUT)
    finally:
        _unmount_below(root)
    (root / STAMP).write_text(stamp)


def make_initramfs(root: Path, say: Callable[[str], None]) -> None:
    """The initramfs made again inside the tree with bootsvc's settings
    (iBFT login, busybox, netboot modules). mkinitramfs reads nothing of
    /proc that matters here, so nothing is mounted for it."""
    _stream(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], say, 600)


def kernel_files(root: Path) -> tuple[Path, Path]:
    """The newest kernel of the tree and its initramfs."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise DebianImageError(f"{root}/boot holds no kernel: is linux-image-amd64 installed?")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{release}"
    if not initrd.is_file():
        raise DebianImageError(f"{initrd} is missing: update-initramfs did not make it")
    return kernels[-1], initrd


def build_debian(cfg: Config, name: str = DEBIAN_BASE, packages: tuple[str, ...] = (), size: int = DEFAULT_SIZE,
                 force: bool = False, uri: str | None = None, say: Callable[[str], None] = print,
                 root_password_file: Path | None = None, ssh_key: Path | None = None) -> Path:
    """The Debian base image, built unless it is there already (``force``:
    build it again; refused while overlays depend on it). Root is locked
    unless a password file or an SSH public key file is given (login.py)."""
    store = ImageStore(cfg)
    dest = store.base_path(name)
    if dest.exists() and not force:
        say(f"{dest} is already built (--force builds it again)")
        return dest
    if size < BOOT_SIZE + 1024 * MIB:
        raise DebianImageError(f"a disk of {size // MIB} MiB is too small for Debian: give --size 2G or more")
    cache = cfg.state_dir / "cache" / "debian"
    root, work = cache / "tree", cache / "work"
    started = time.monotonic()
    steps = 6

    def step(n: int, what: str) -> None:
        say(f"[{n}/{steps}] {what}")

    try:
        if dest.exists():
            store.refuse_if_used(dest)  # before minutes of work, not after
        login = RootLogin.from_files(root_password_file, ssh_key)
        check_host()
        sources = mirror.host_sources()
        uri = uri or mirror.mirror_for(sources, SUITE)
        wanted = sorted(set(PACKAGES) | set(packages))
        step(1, f"debootstrap: Debian {SUITE} from {uri} into {root} (downloads kept in {cache / 'debs'})")
        debootstrap(root, cache / "debs", uri, wanted, say)
        step(2, "configuring: iBFT login in the initramfs, root by label, console, first-boot identity")
        tree.configure(root, mirror.image_sources(sources, SUITE))
        login.apply(root)
        say(f"  {login.describe()}")
        tree.configure_restart(root)  # iSCSI waits out a restart of bootsvc
        step(3, "initramfs with open-iscsi's iBFT login")
        make_initramfs(root, say)
        tree.forget_identity(root)
        vmlinuz, initrd = kernel_files(root)
        step(4, f"disk: {size // MIB} MiB, FAT boot partition with SYSLINUX and systemd-boot, ext4 root")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        boot = boot_files(work / "boot", vmlinuz, initrd, tree.KERNEL_ARGS, "debian", say)
        raw = work / "debian.raw"
        build_disk(raw, Layout(size=size, boot_size=BOOT_SIZE), boot, root)
        step(5, f"storing it as {dest}")
        store.add_base(raw, name, replace=force)
        step(6, f"kernel and initramfs for boot: kernel profiles in {boot_dir(cfg, name)}")
        publish_kernel(boot, boot_dir(cfg, name))
    except (mirror.MirrorError, LoginError, BuildError, ImageError, OSError) as e:
        raise DebianImageError(str(e)) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"built {dest} ({vmlinuz.name}) in {time.monotonic() - started:.0f} s")
    return dest
