"""Bases and machine disks in a Ceph RBD pool (issue 22's image store):
:class:`RbdPool`, the pool operations, and :class:`CephImageStore`, the
fleet's image store on them (``storage: {backend: ceph}``; ``bootsvc image``
does not manage a pool yet).

A base is an RBD image with one protected snapshot, :data:`BASE_SNAP`; a
machine's disk is a clone of that snapshot (copy-on-write, made in O(1)
whatever the base's size). A base with clones is never written or removed:
Ceph itself refuses to unprotect a snapshot with children. Every call here
blocks on the cluster: the fleet runs them off the event loop.
"""

from __future__ import annotations

import dataclasses
import errno
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from target import LunSpec, TargetSpec, open_backend
from target.backend import BackendError
from target.rbd import CLUSTERS, PREFIX, bindings, plain_reason

from .config import Config
from .events import Bus, Kind
from .images import ImageError, ImageStore
from .inventory import Machine

BASE_SNAP = "base"
COPY_CHUNK = 4 << 20  # one RBD object (the default object size)


class CephImageError(ImageError):
    """A pool operation that cannot be done; the message says why, plainly
    (an ImageError: the fleet reports it as a disk failure, the CLI prints it)."""


@dataclass(frozen=True)
class BaseInfo:
    name: str
    size: int
    clones: tuple[str, ...]


@dataclass(frozen=True)
class DiskInfo:
    name: str
    base: str | None  # None: not a clone (flattened, or made otherwise)
    size: int
    allocated: int  # bytes the clone holds itself (written since it was made)


class RbdPool:
    """One pool of one cluster; ``close`` (or ``with``) releases it."""

    def __init__(self, pool: str, conf: str | None = None, user: str | None = None) -> None:
        _, self._rbd = bindings()
        self.pool, self.conf, self.user = pool, conf, user
        try:
            self._cluster = CLUSTERS.acquire(conf, user)
        except BackendError as e:
            raise CephImageError(str(e)) from e
        try:
            self._ioctx = self._cluster.open_ioctx(pool)
        except Exception as e:
            CLUSTERS.release(self._cluster)
            if getattr(e, "errno", None) in (errno.ENOENT, -errno.ENOENT):
                raise CephImageError(f"no pool {pool} in the cluster (ceph osd pool create {pool}; "
                                     f"rbd pool init {pool})") from e
            raise CephImageError(f"cannot open pool {pool}: {plain_reason(e)}") from e

    def __enter__(self) -> RbdPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ioctx is not None:
            self._ioctx.close()
            self._ioctx = None
            CLUSTERS.release(self._cluster)

    def lun_path(self, image: str) -> str:
        """The ``rbd:`` name a LUN serves ``image`` by (target/rbd.py)."""
        path = f"{PREFIX}{self.pool}/{image}"
        if self.conf:
            path += f":conf={self.conf}"
        if self.user:
            path += f":id={self.user}"
        return path

    @contextmanager
    def _image(self, name: str, snapshot: str | None = None, read_only: bool = False) -> Iterator[Any]:
        try:
            img = self._rbd.Image(self._ioctx, name, snapshot=snapshot, read_only=read_only)
        except self._rbd.ImageNotFound as e:
            raise CephImageError(f"no image {name} in pool {self.pool}") from e
        try:
            yield img
        finally:
            img.close()

    def names(self) -> list[str]:
        return list(self._rbd.RBD().list(self._ioctx))

    def exists(self, name: str) -> bool:
        return name in self.names()

    def rename(self, name: str, new: str) -> None:
        """Also while a client has it open (it keeps the image, by id)."""
        self._call(f"rename {name} to {new}", lambda: self._rbd.RBD().rename(self._ioctx, name, new))

    # -- bases ------------------------------------------------------------------

    def add_base(self, name: str, size: int, read: Callable[[int, int], bytes], replace: bool = False) -> None:
        """A base of ``size`` bytes filled from ``read(offset, length)``
        (zero chunks are left unwritten: the image stays thin), then
        snapshotted and protected. ``replace``: an unused base of that name
        goes first; one with clones is refused."""
        if self.exists(name):
            if not replace:
                raise CephImageError(f"base {name} already exists in pool {self.pool}")
            self.remove_base(name)
        self._call(f"create {name}", lambda: self._rbd.RBD().create(self._ioctx, name, size))
        try:
            with self._image(name) as img:
                for offset in range(0, size, COPY_CHUNK):
                    data = read(offset, min(COPY_CHUNK, size - offset))
                    if data.count(0) != len(data):
                        img.write(data, offset)
                img.flush()
                img.create_snap(BASE_SNAP)
                img.protect_snap(BASE_SNAP)
        except BaseException:
            self._remove_image(name)
            raise

    def bases(self) -> list[BaseInfo]:
        out = []
        for name in sorted(self._rbd.RBD().list(self._ioctx)):
            with self._image(name, read_only=True) as img:
                if not any(s["name"] == BASE_SNAP for s in img.list_snaps()):
                    continue
                img.set_snap(BASE_SNAP)
                clones = tuple(sorted(c[1] for c in img.list_children()))
                out.append(BaseInfo(name, img.size(), clones))
        return out

    def remove_base(self, name: str) -> None:
        """A base without clones goes; one with clones is refused, by name."""
        with self._image(name) as img:
            if any(s["name"] == BASE_SNAP for s in img.list_snaps()):
                img.set_snap(BASE_SNAP)
                children = sorted(c[1] for c in img.list_children())
                if children:
                    raise CephImageError(f"base {name} has {len(children)} clone(s) ({', '.join(children[:3])}"
                                         f"{', ...' if len(children) > 3 else ''}): remove or commit them first")
                img.set_snap(None)
                if img.is_protected_snap(BASE_SNAP):
                    img.unprotect_snap(BASE_SNAP)
                img.remove_snap(BASE_SNAP)
        self._remove_image(name)

    # -- machine disks ----------------------------------------------------------

    def clone(self, base: str, disk: str, replace: bool = False) -> None:
        """``disk`` as a fresh clone of ``base``; ``replace``: the old one
        goes first (refused while a client has it open)."""
        if self.exists(disk):
            if not replace:
                raise CephImageError(f"disk {disk} already exists in pool {self.pool}")
            self.remove_disk(disk)
        if not self.exists(base):
            raise CephImageError(f"no base {base} in pool {self.pool}")
        self._call(f"clone {base} as {disk}", lambda: self._rbd.RBD().clone(
            self._ioctx, base, BASE_SNAP, self._ioctx, disk))

    def renew(self, base: str, disk: str) -> None:
        """A fresh clone made aside and renamed over ``disk`` (an ephemeral
        disk at a new boot): ``disk`` is never missing for long."""
        aside = f".{disk}.renewal"
        self.clone(base, aside, replace=True)
        if self.exists(disk):
            self.remove_disk(disk)
        self.rename(aside, disk)

    def remove_disk(self, disk: str) -> None:
        self._remove_image(disk)

    def disks(self) -> list[DiskInfo]:
        """Every clone and plain image that is not a base, with the bytes
        each holds itself."""
        out = []
        for name in sorted(self._rbd.RBD().list(self._ioctx)):
            with self._image(name, read_only=True) as img:
                if any(s["name"] == BASE_SNAP for s in img.list_snaps()):
                    continue
                try:
                    parent = img.get_parent_image_spec()["image_name"]
                except self._rbd.ImageNotFound:
                    parent = None
                out.append(DiskInfo(name, parent, img.size(), _allocated(img)))
        return out

    def commit(self, disk: str, new_base: str) -> None:
        """A new base with ``disk``'s contents (its base's data included),
        snapshotted and protected; ``disk`` stays as it is."""
        if self.exists(new_base):
            raise CephImageError(f"base {new_base} already exists in pool {self.pool}")
        with self._image(disk, read_only=True) as img:
            self._call(f"copy {disk} to {new_base}", lambda: img.copy(self._ioctx, new_base))
        try:
            with self._image(new_base) as img:
                img.create_snap(BASE_SNAP)
                img.protect_snap(BASE_SNAP)
        except BaseException:
            self._remove_image(new_base)
            raise

    # -- helpers ----------------------------------------------------------------

    def _remove_image(self, name: str) -> None:
        def remove() -> None:
            try:
                self._rbd.RBD().remove(self._ioctx, name)
            except self._rbd.ImageNotFound:
                pass
        self._call(f"remove {name}", remove)

    def _call(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except self._rbd.ImageBusy as e:
            raise CephImageError(f"cannot {what}: the image is open in another client (a server serving it)") from e
        except self._rbd.ImageHasSnapshots as e:
            raise CephImageError(f"cannot {what}: it has snapshots") from e
        except self._rbd.Error as e:
            raise CephImageError(f"cannot {what}: {plain_reason(e)}") from e


def _allocated(img: Any) -> int:
    """Bytes of ``img`` itself (not its parent's) that hold data."""
    total = 0

    def count(offset: int, length: int, exists: bool) -> None:
        nonlocal total
        if exists:
            total += length

    img.diff_iterate(0, img.size(), None, count, include_parent=False)
    return total


class CephImageStore(ImageStore):
    """The fleet's image store on the storage section's pool: a machine's
    disk is the clone named after its hostname, of the base named after its
    profile's base file without the extension (``base: demo-linux.qcow2``:
    RBD image ``demo-linux``, snapshot ``base``). Machines' reservations
    stay under state_dir, as with files."""

    def __init__(self, cfg: Config, machines: Mapping[str, Machine] | None = None, bus: Bus | None = None) -> None:
        super().__init__(cfg, machines, bus)
        self._pool: RbdPool | None = None

    @property
    def pool(self) -> RbdPool:
        """Opened on first use and kept: every call would reconnect otherwise."""
        if self._pool is None:
            s = self.cfg.storage
            self._pool = RbdPool(s.pool, s.conf, s.user)
        return self._pool

    def base_image(self, machine: Machine) -> str:
        return Path(self.profile(machine).base).stem

    @staticmethod
    def renewal_name(hostname: str) -> str:
        return f".{hostname}.renewal"

    def create_overlay(self, machine: Machine, replace: bool = False,  # type: ignore[override]
                       aside: bool = False) -> str:
        """A fresh clone for the machine (``aside``: its renewal); the
        ``rbd:`` name that serves it."""
        name = self.renewal_name(machine.hostname) if aside else machine.hostname
        base = self.base_image(machine)
        self.pool.clone(base, name, replace=replace or aside)
        self.bus.emit(Kind.IMAGE_OVERLAY_CREATED, mac=machine.mac, hostname=machine.hostname,
                      base=f"{PREFIX}{self.pool.pool}/{base}@{BASE_SNAP}")
        return self.pool.lun_path(name)

    def publish_base(self, base: Path, replace: bool = False) -> str:
        """The base file (built or imported into state_dir/images, kept as
        the local copy) copied into the pool as the base machines clone:
        RBD image named after the file without its extension, snapshot
        ``base``, protected. One that is there is kept unless ``replace``
        (refused while clones use it)."""
        name = base.stem
        where = f"{PREFIX}{self.pool.pool}/{name}@{BASE_SNAP}"
        if self.pool.exists(name) and not replace:
            return where
        try:
            img = open_backend(LunSpec(str(base), read_only=True))
        except BackendError as e:
            raise CephImageError(str(e)) from e
        try:
            self.pool.add_base(name, img.size, img.read_sync, replace=replace)
        finally:
            img.close()
        self.bus.emit(Kind.IMAGE_BASE_ADDED, base=where)
        return where

    def prepared(self, machine: Machine) -> tuple[TargetSpec, bool]:
        made = not self.pool.exists(machine.hostname)
        if made:
            self.create_overlay(machine)
        return self.boot_spec(machine, LunSpec(self.pool.lun_path(machine.hostname))), made

    def make_renewal(self, machine: Machine, lun: LunSpec) -> LunSpec:
        return dataclasses.replace(lun, path=self.create_overlay(machine, replace=True, aside=True))

    def keep_renewal(self, machine: Machine) -> None:
        """The served disk may still be open (the dropped sessions' last
        requests): it is renamed aside and removed once closed, at the
        next renewal or removal."""
        host = machine.hostname
        if self.pool.exists(host):
            self.pool.rename(host, f".{host}.old.{time.time_ns()}")
        self.pool.rename(self.renewal_name(host), host)
        self._remove_old(host)

    def drop_renewal(self, machine: Machine) -> None:
        self.pool.remove_disk(self.renewal_name(machine.hostname))

    def remove_disk(self, machine: Machine) -> None:
        self.pool.remove_disk(machine.hostname)
        self._remove_old(machine.hostname)

    def _remove_old(self, host: str) -> None:
        for name in self.pool.names():
            if name.startswith(f".{host}.old."):
                try:
                    self.pool.remove_disk(name)
                except CephImageError:
                    pass  # still open: removed next time
