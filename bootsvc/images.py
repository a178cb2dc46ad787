"""The image store under ``state_dir``: shared read-only base images in
``images/`` and one copy-on-write qcow2 overlay per machine in
``overlays/<hostname>.qcow2`` (DESIGN.md "Storage").

Overlays name their base by a path relative to ``overlays/`` so a state
directory can be moved or restored elsewhere. Whoever writes an overlay
holds an exclusive lock on it (the iSCSI target while serving it), so the
commands here refuse to reset, commit or rebase an overlay that is in use.
Bases are never written: the commands that would change one refuse while
overlays depend on it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from target import QCOW2_MAGIC as MAGIC
from target import Backend, BackendError, CheckReport, LunSpec, Qcow2Backend, Qcow2Error, TargetSpec, create_image
from target import Kind as ClusterKind
from target import check_image as check
from target import open_backing, open_image, resolve_backing, set_backing

from . import SCSI_PRODUCT, SCSI_VENDOR
from .config import Config
from .events import Bus, Kind, logging_bus
from .inventory import Machine
from .profiles import Profile
from .storage_config import StorageBackend

CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)


class ImageError(Exception):
    """An image operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class BaseInfo:
    name: str
    path: Path
    format: str
    virtual_size: int
    file_bytes: int
    dependents: tuple[str, ...]


@dataclass(frozen=True)
class OverlayInfo:
    host: str
    path: Path
    base: str
    virtual_size: int
    allocated: int
    limit: int | None
    policy: str
    in_use: bool


def image_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == MAGIC else "raw"


def in_use(path: Path) -> bool:
    """Whether another process holds the image open for writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def progress(total: int, what: str) -> tqdm:
    """A progress bar on stderr (only on a terminal: logs stay clean)."""
    return tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False)


class ImageStore:
    def __init__(self, cfg: Config, machines: Mapping[str, Machine] | None = None, bus: Bus | None = None) -> None:
        self.cfg = cfg
        # the running fleet's machines (adopted ones too); the config's for the CLI
        self.machines = cfg.machines if machines is None else machines
        self.bus = bus if bus is not None else logging_bus()
        self.images_dir = cfg.images_dir
        self.overlays_dir = cfg.overlays_dir

    def close(self) -> None:
        """Nothing is held open with files (an RBD pool's store closes its pool)."""

    def succeed(self, old: ImageStore) -> None:
        """Take over what ``old``, the store of the config before a reload,
        holds open on the same storage (nothing, with files)."""

    # -- names --------------------------------------------------------------------

    def machine(self, host: str) -> Machine:
        for m in self.machines.values():
            if host in (m.hostname, m.mac):
                return m
        raise ImageError(f"no machine {host!r} in {self.cfg.path}")

    def profile(self, machine: Machine) -> Profile:
        return self.cfg.profiles[machine.profile]

    def base_path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.images_dir / p

    def reservations_dir(self, target_iqn: str) -> Path:
        """Where a target's LUNs keep persistent reservations made with APTPL."""
        return self.cfg.state_dir / "reservations" / target_iqn.replace("/", "%2F")

    def overlay_path(self, hostname: str) -> Path:
        return self.overlays_dir / f"{hostname}.qcow2"

    def renewal_path(self, hostname: str) -> Path:
        """Where a renewed overlay is made before it replaces the overlay."""
        return self.overlays_dir / f".{hostname}.renewal.qcow2"

    def _backing_name(self, base: Path) -> str:
        """How an overlay names its base: relative inside the state dir."""
        try:
            base.resolve().relative_to(self.cfg.state_dir.resolve())
        except ValueError:
            return str(base.resolve())
        return os.path.relpath(base.resolve(), self.overlays_dir.resolve())

    # -- overlays -----------------------------------------------------------------

    def create(self, host: str, replace: bool = False) -> Path:
        """Create a machine's overlay on its profile's base, in O(1)."""
        return self.create_overlay(self.machine(host), replace)

    def create_overlay(self, machine: Machine, replace: bool = False, aside: bool = False) -> Path:
        """``aside``: made beside the overlay (``renewal_path``) for the
        running fleet, which swaps it in by rename once it knows nobody
        logged in meanwhile; the overlay itself is not touched."""
        base = self.base_path(self.profile(machine).base)
        if not base.is_file():
            raise ImageError(f"base image {base} of profile {machine.profile} does not exist")
        path = self.renewal_path(machine.hostname) if aside else self.overlay_path(machine.hostname)
        if replace and not aside and in_use(path):
            raise ImageError(f"{machine.hostname}'s overlay is in use by a running bootsvc; stop serving it first")
        self.overlays_dir.mkdir(parents=True, exist_ok=True)
        try:
            create_image(path, backing=self._backing_name(base), backing_format=image_format(base),
                         overwrite=replace)
        except BackendError as e:
            raise ImageError(str(e)) from e
        self.bus.emit(Kind.IMAGE_OVERLAY_CREATED, mac=machine.mac, hostname=machine.hostname, base=str(base))
        return path

    def reset(self, machine: Machine) -> Path:
        """Throw a machine's changes away: a fresh overlay on its base."""
        return self.create_overlay(machine, replace=True)

    def prepare(self, machine: Machine) -> TargetSpec:
        """The boot target of a machine, its overlay made if missing."""
        return self.prepared(machine)[0]

    def prepared(self, machine: Machine) -> tuple[TargetSpec, bool]:
        """The boot target of a machine, and whether its overlay was made
        just now. An ephemeral overlay that is there is kept: a server
        restart is no new boot, and a running machine keeps its disk (the
        fleet renews it when the machine next boots)."""
        profile = self.profile(machine)
        path = self.overlay_path(machine.hostname)
        made = not path.exists()
        if made:
            self.create_overlay(machine)
        return self.boot_spec(machine, LunSpec(str(path), limit=profile.overlay_limit)), made

    def boot_spec(self, machine: Machine, disk: LunSpec) -> TargetSpec:
        """A machine's boot target serving ``disk``: only its initiator, one writer."""
        return TargetSpec(iqn=machine.target_iqn, alias=f"{machine.hostname} boot disk", vendor=SCSI_VENDOR,
                          product=SCSI_PRODUCT, luns=(disk,),
                          reservations=str(self.reservations_dir(machine.target_iqn)),
                          allowed_initiators=frozenset({machine.initiator_iqn}), single_writer=True)

    # -- a running machine's renewal: made aside, then swapped in or thrown away -------

    def make_renewal(self, machine: Machine, lun: LunSpec) -> LunSpec:
        """A fresh disk beside the machine's served one (``lun``), to be
        served in its place: the fleet opens it and later calls
        ``keep_renewal`` or ``drop_renewal``."""
        path = self.create_overlay(machine, replace=True, aside=True)
        return dataclasses.replace(lun, path=str(path))

    def keep_renewal(self, machine: Machine) -> None:
        """The renewal is served now: it becomes the machine's disk."""
        os.replace(self.renewal_path(machine.hostname), self.overlay_path(machine.hostname))

    def remove_disk(self, machine: Machine) -> None:
        """A machine given up (an adopted one that never booted): its disk goes."""
        self.overlay_path(machine.hostname).unlink(missing_ok=True)

    def drop_renewal(self, machine: Machine) -> None:
        """The renewal is not wanted (the machine is no longer served)."""
        self.renewal_path(machine.hostname).unlink(missing_ok=True)

    def overlays(self) -> list[OverlayInfo]:
        out = []
        for m in sorted(self.machines.values(), key=lambda m: m.hostname):
            path = self.overlay_path(m.hostname)
            if not path.exists():
                continue
            profile = self.profile(m)
            with self._open(path) as img:
                out.append(OverlayInfo(m.hostname, path, img.header.backing_file, img.size, img.allocated_bytes(),
                                       profile.overlay_limit, profile.overlay.value, in_use(path)))
        return out

    @contextmanager
    def _open(self, path: Path, writable: bool = False) -> Iterator[Qcow2Backend]:
        try:
            img = open_image(path, read_only=not writable)
        except BackendError as e:
            raise ImageError(str(e)) from e
        try:
            yield img
        finally:
            img.close()

    def _source(self, host: str) -> Path:
        path = self.overlay_path(self.machine(host).hostname)
        if not path.exists():
            raise ImageError(f"{host} has no overlay yet ({path})")
        if in_use(path):
            raise ImageError(f"{host}'s overlay is in use by a running bootsvc; stop serving it first")
        return path

    # -- bases ----------------------------------------------------------------------

    def _backing_map(self) -> list[tuple[str, Path]]:
        """(name, resolved backing file) of every qcow2 overlay and base."""
        out = []
        for directory in (self.overlays_dir, self.images_dir):
            for p in sorted(directory.glob("*")) if directory.is_dir() else ():
                if not p.is_file() or p.name.startswith(".") or image_format(p) != "qcow2":
                    continue
                try:
                    with self._open(p) as img:
                        backing = img.header.backing_file
                except ImageError:
                    continue
                if backing:
                    name = p.stem if directory == self.overlays_dir else p.name
                    out.append((name, resolve_backing(str(p), backing).resolve()))
        return out

    def dependents(self, base: Path, backing_map: list[tuple[str, Path]] | None = None) -> list[str]:
        """Images whose backing file is ``base``: overlays and qcow2 bases."""
        target = base.resolve()
        return [name for name, backing in (self._backing_map() if backing_map is None else backing_map)
                if backing == target]

    def bases(self) -> list[BaseInfo]:
        out = []
        backing_map = self._backing_map()  # open every image once, not once per base
        for p in sorted(self.images_dir.glob("*")) if self.images_dir.is_dir() else ():
            if not p.is_file() or p.name.startswith("."):
                continue
            fmt = image_format(p)
            try:
                img: Backend = open_backing(str(p), fmt, 0)
            except BackendError as e:
                self.bus.emit(Kind.IMAGE_UNREADABLE, path=str(p), why=str(e))
                continue
            try:
                out.append(BaseInfo(p.name, p, fmt, img.size, p.stat().st_blocks * 512,
                                    tuple(self.dependents(p, backing_map))))
            finally:
                img.close()
        return out

    def commit(self, host: str, new_base: str, replace: bool = False) -> Path | str:
        """A new base image holding what the machine sees now (its overlay
        merged with its base): raw, or qcow2 when the name ends in .qcow2.
        It is made read-only; overlays can then be based on it. ``replace``:
        a base of that name no image depends on is replaced."""
        source = self._source(host)
        dest = self.new_base_path(new_base, replace)
        with self._open(source) as img:
            self._write_base(img, dest, f"commit {host}")
        self.bus.emit(Kind.IMAGE_COMMITTED, hostname=host, base=str(dest))
        return dest

    def add_base(self, raw: Path, name: str, replace: bool = False) -> Path:
        """Store the raw disk ``raw`` as base ``name`` (qcow2 when the name
        ends in .qcow2). Replacing a base is refused while overlays use it."""
        dest = self.new_base_path(name, replace)
        try:
            img = open_backing(str(raw), "raw", 0)
        except BackendError as e:
            raise ImageError(str(e)) from e
        try:
            self._write_base(img, dest, f"store {dest.name}")
        finally:
            img.close()
        self.bus.emit(Kind.IMAGE_BASE_ADDED, base=str(dest))
        return dest

    def new_base_path(self, name: str, replace: bool = False) -> Path:
        """Where base ``name`` goes, once it is known it may be written
        there: a base that exists is replaced only with ``replace`` and
        never while images depend on it. Asked before the work, not after."""
        dest = self.base_path(name)
        if dest.exists():
            self.refuse_if_used(dest)
            if not replace:
                raise ImageError(f"{dest} exists; pick another name or remove it first")
        return dest

    def publish_base(self, base: Path, replace: bool = False) -> str:
        """Where machines find a base just built or imported into
        state_dir/images: here, the file itself (a store on shared storage
        copies it there: CephImageStore)."""
        return str(base)

    def add_base_file(self, dest: Path, make: Callable[[Path], object]) -> Path:
        """A new base ``dest`` (from ``new_base_path``) whose file
        ``make(tmp)`` writes, e.g. a qemu-img conversion; on disk before
        it appears under its name."""
        with self._base_file(dest) as tmp:
            make(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.bus.emit(Kind.IMAGE_BASE_ADDED, base=str(dest))
        return dest

    @contextmanager
    def _base_file(self, dest: Path) -> Iterator[Path]:
        """A temporary file beside ``dest`` for the block to fill; it becomes
        the read-only base ``dest`` only once the block completes (removed
        if it fails), so a half-written base is never seen. A base it
        replaces is checked again at the end: an overlay made on it while
        the new one was written would otherwise see its disk change."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            if dest.exists():
                self.refuse_if_used(dest)
            os.chmod(tmp, 0o444)
            os.rename(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def refuse_if_used(self, base: Path) -> None:
        users = self.dependents(base)
        if users:
            raise ImageError(f"refusing to modify base {base.name}: {len(users)} image(s) depend on it "
                             f"({', '.join(users)})")

    def _write_base(self, img: Backend, dest: Path, what: str) -> None:
        """``img``'s contents as a new read-only base at ``dest``."""
        with self._base_file(dest) as tmp:
            if dest.suffix == ".qcow2":
                create_image(tmp, size=img.size, overwrite=True)
                with self._open(tmp, writable=True) as out:
                    _copy(img, out.write_sync, what)
            else:
                with open(tmp, "wb") as f:
                    f.truncate(img.size)
                    _copy(img, lambda off, data: os.pwrite(f.fileno(), data, off), what)
                    os.fsync(f.fileno())

    def rebase(self, host: str, new_base: str) -> None:
        """Put a machine's overlay on another base without changing what the
        machine sees: clusters the overlay does not hold and that differ
        between the old and the new base are copied into the overlay first
        (so a crash midway leaves the overlay as it was)."""
        source = self._source(host)
        base = self.base_path(new_base)
        if not base.is_file():
            raise ImageError(f"no base image {base}")
        fmt = image_format(base)
        try:
            new: Backend = open_backing(str(base), fmt, 1)
        except BackendError as e:
            raise ImageError(str(e)) from e
        try:
            with self._open(source, writable=True) as img:
                cs = img.cluster_size
                with progress(img.size, f"rebase {host}") as bar:
                    for pos in range(0, img.size, cs):
                        n = min(cs, img.size - pos)
                        if img.kind_at(pos) is ClusterKind.BACKING:
                            old = img.read_sync(pos, n)
                            theirs = new.read_sync(pos, min(n, max(0, new.size - pos)))
                            if old != theirs.ljust(n, b"\0"):
                                img.write_sync(pos, old)
                        bar.update(n)
                img.flush_sync()
            set_backing(source, self._backing_name(base), fmt)
        except Qcow2Error as e:
            raise ImageError(str(e)) from e
        finally:
            new.close()
        self.bus.emit(Kind.IMAGE_REBASED, hostname=host, base=str(base))

    def check(self, hosts: list[str], repair: bool = False) -> list[CheckReport]:
        paths = [self._source(h) for h in hosts] if hosts else \
            [self.overlay_path(m.hostname) for m in self.machines.values()
             if self.overlay_path(m.hostname).exists()]
        reports = []
        for path in sorted(paths):
            if repair and in_use(path):
                raise ImageError(f"{path} is in use by a running bootsvc; stop serving it to repair it")
            with self._open(path, writable=repair) as img:  # a writable open repairs a dirty image at once
                reports.append(check(img, repair=repair))
        return reports


def _copy(img: Backend, write: Callable[[int, bytes], object], what: str) -> None:
    """Copy every non-zero MiB of ``img`` through ``write(offset, data)``."""
    with progress(img.size, what) as bar:
        for pos in range(0, img.size, CHUNK):
            n = min(CHUNK, img.size - pos)
            data = img.read_sync(pos, n)
            if data != ZERO_CHUNK[:n]:
                write(pos, data)
            bar.update(n)


def image_store(cfg: Config, machines: Mapping[str, Machine] | None = None, bus: Bus | None = None) -> ImageStore:
    """The store of the config's storage backend: files, or an RBD pool."""
    if cfg.storage.backend is StorageBackend.CEPH:
        from .ceph_images import CephImageStore  # it builds on ImageStore, above
        return CephImageStore(cfg, machines, bus)
    return ImageStore(cfg, machines, bus)
