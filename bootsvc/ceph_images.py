"""Bases and machine disks in a Ceph RBD pool (issue 22's image store):
:class:`RbdPool`, the pool operations, and :class:`CephImageStore`, the
fleet's image store on them (``storage: {backend: ceph}``), which
``bootsvc image`` also uses.

A base is an RBD image with one protected snapshot, :data:`BASE_SNAP`; a
machine's disk is a clone of that snapshot (copy-on-write, made in O(1)
whatever the base's size). A base with clones is never written or removed:
Ceph itself refuses to unprotect a snapshot with children. Every call here
blocks on the cluster: the fleet runs them off the event loop.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from target import CheckReport, LunSpec, TargetSpec, open_backend
from target.backend import BackendError
from target.rbd import CLUSTERS, HOLDER_KEY, PREFIX, bindings, plain_reason

from .config import Config
from .events import Bus, Kind
from .images import ImageError, ImageStore, progress
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


@dataclass(frozen=True)
class Users:
    """Who has an image: the other clients watching it (a server that has
    it open), and the holders of its exclusive lock, each alive (its client
    still watches) or dead (its client went away without releasing it)."""

    watchers: tuple[str, ...]  # client addresses, this one's left out
    holders: tuple[str, ...]  # lock owners' client addresses
    holder_name: str = ""  # what the holding server wrote (bootsvc.holder)

    @property
    def dead_holders(self) -> tuple[str, ...]:
        return tuple(h for h in self.holders if h not in self.watchers)

    @property
    def busy(self) -> bool:
        return bool(self.watchers) or len(self.dead_holders) < len(self.holders)

    def who(self) -> str:
        """The users in plain words, for a refusal."""
        live = [h for h in self.holders if h in self.watchers]
        if live:
            return f"{self.holder_name or 'a server'} holds its lock (client {', '.join(live)})"
        return f"open in client {', '.join(self.watchers)}"


@dataclass(frozen=True)
class DiskState:
    name: str
    parent: tuple[str, str] | None  # (image, snapshot) it is a clone of
    protected: bool | None  # its parent snapshot's protection
    users: Users
    allocated: int


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

    def size(self, name: str) -> int:
        with self._image(name, read_only=True) as img:
            return int(img.size())

    def exists(self, name: str) -> bool:
        return name in self.names()

    def rename(self, name: str, new: str) -> None:
        """Also while a client has it open (it keeps the image, by id)."""
        self._call(f"rename {name} to {new}", lambda: self._rbd.RBD().rename(self._ioctx, name, new))

    def users(self, img: Any) -> Users:
        """Who else has ``img`` (opened writable: librbd lists lock owners
        only then); this client's own watch is left out."""
        me = self._cluster.get_instance_id()
        watchers = tuple(w["addr"] for w in img.watchers_list() if w["id"] != me)
        holders = tuple(o["owner"] for o in img.lock_get_owners())
        name = ""
        if holders:
            try:
                name = img.metadata_get(HOLDER_KEY)
            except (self._rbd.Error, KeyError):
                pass
        return Users(watchers, holders, name)

    @contextmanager
    def held(self, name: str, why: str) -> Iterator[Any]:
        """``name`` opened and locked for this command alone, refused while
        a server has it (its lock, or open): no server claims it meanwhile,
        and its refusal names this command (``why``)."""
        with self._image(name) as img:
            users = self.users(img)
            if users.busy:
                raise CephImageError(f"disk {name} is in use: {users.who()}; stop serving it first")
            try:
                img.lock_acquire(self._rbd.RBD_LOCK_MODE_EXCLUSIVE)
            except self._rbd.Error as e:
                raise CephImageError(f"disk {name} is in use: cannot take its lock: {plain_reason(e)}") from e
            try:
                img.metadata_set(HOLDER_KEY, f"bootsvc image {why} on {socket.gethostname()}, pid {os.getpid()}")
            except self._rbd.Error:
                pass  # a name for others' messages only
            try:
                yield img
            finally:
                img.lock_release()

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

    def commit(self, disk: str, new_base: str, replace: bool = False) -> None:
        """A new base with ``disk``'s contents (its base's data included),
        snapshotted and protected; ``disk`` stays as it is, locked by this
        call meanwhile (refused while a server has it). The copy is made
        aside and renamed in: ``replace`` then removes a base of that name
        without clones."""
        if self.exists(new_base):
            if not replace:
                raise CephImageError(f"base {new_base} already exists in pool {self.pool}; "
                                     "pick another name or replace it (--force)")
            self._base_snapshot(new_base)  # never a machine's disk
            self._refuse_clones(new_base)
        aside = f".{new_base}.commit"
        self._remove_base_quietly(aside)  # a commit that died midway
        with self.held(disk, f"commit to {new_base}") as img:
            # read through librbd, parent included: Image.copy of a clone
            # leaves the objects it has not written yet as zeros (measured)
            self.add_base(aside, img.size(), img.read)
        try:
            if self.exists(new_base):
                self.remove_base(new_base)
            self.rename(aside, new_base)
        except BaseException:
            self._remove_base_quietly(aside)
            raise

    def rebase(self, disk: str, new_base: str, progress: Callable[[int], object] = lambda n: None) -> int:
        """``disk`` made a clone of ``new_base`` with its contents kept, as
        qemu-img rebase does in safe mode: a fresh clone of ``new_base`` is
        made aside, every object-sized block where ``disk`` (with its old
        base) and ``new_base`` read differently is written into it, and it
        is renamed in; the old disk goes. Blocks neither image maps are
        skipped; the others are read from both. Returns the bytes written."""
        self._base_snapshot(new_base)
        aside = f".{disk}.rebase"
        with self.held(disk, f"rebase onto {new_base}") as old:
            self.clone(new_base, aside, replace=True)
            try:
                with self._image(aside) as new:
                    written = _copy_differences(old, new, progress)
                    new.flush()
                gone = f".{disk}.old.{time.time_ns()}"
                self.rename(disk, gone)
            except BaseException:
                self._remove_image(aside)
                raise
            self.rename(aside, disk)
        try:
            self._remove_image(gone)
        except CephImageError:
            pass  # done all the same; image check --repair removes it
        return written

    def state(self, name: str) -> DiskState:
        """What ``image check`` looks at in one image."""
        with self._image(name) as img:
            try:
                spec = img.get_parent_image_spec()
            except self._rbd.ImageNotFound:
                parent = protected = None
            else:
                parent = (spec["image_name"], spec["snap_name"])
                with self._image(spec["image_name"], read_only=True) as base:
                    protected = base.is_protected_snap(spec["snap_name"])
            return DiskState(name, parent, protected, self.users(img), _allocated(img))

    def protect(self, base: str, snapshot: str = BASE_SNAP) -> None:
        with self._image(base) as img:
            self._call(f"protect {base}@{snapshot}", lambda: img.protect_snap(snapshot))

    def break_dead_locks(self, name: str) -> list[str]:
        """The lock owners of ``name`` whose client no longer watches it
        (gone without releasing it), broken: the clients named."""
        with self._image(name) as img:
            dead = self.users(img).dead_holders
            for owner in dead:
                self._call(f"break the lock of {name}",
                           lambda o=owner: img.lock_break(self._rbd.RBD_LOCK_MODE_EXCLUSIVE, o))
        return list(dead)

    def _base_snapshot(self, base: str) -> None:
        """Refuse ``base`` unless it is a base (it has the protected ``base`` snapshot)."""
        with self._image(base, read_only=True) as img:
            if not any(s["name"] == BASE_SNAP for s in img.list_snaps()):
                raise CephImageError(f"{base} in pool {self.pool} is not a base (no snapshot {BASE_SNAP})")

    def _refuse_clones(self, base: str) -> None:
        for b in self.bases():
            if b.name == base and b.clones:
                raise CephImageError(f"refusing to replace base {base}: {len(b.clones)} clone(s) use it "
                                     f"({', '.join(b.clones[:3])}{', ...' if len(b.clones) > 3 else ''})")

    def _remove_base_quietly(self, name: str) -> None:
        try:
            self.remove_base(name)
        except CephImageError:
            pass

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


# what a renewal, removal or rebase leaves beside a machine's disk (HOST) if it stops midway
_LEFTOVER = re.compile(r"\.(?P<host>.+)\.(renewal|rebase|old\.\d+)")


def _stale(report: CheckReport, what: str, repair: bool, fix: Callable[[], object]) -> None:
    """One stale item in ``report``; repaired (``fix``) with ``repair``."""
    report.leaks += 1
    if not repair:
        report.notes.append(what)
        return
    try:
        fix()
    except CephImageError as e:
        report.notes.append(f"{what}: not repaired: {e}")
        return
    report.leaks_fixed += 1
    report.notes.append(f"{what}: repaired")


def _copy_differences(old: Any, new: Any, progress: Callable[[int], object]) -> int:
    """Write into ``new`` every block of ``old`` that reads differently
    there (both with their parents); blocks neither maps are skipped."""
    size = old.size()
    if new.size() != size:
        new.resize(size)
    block = old.stat()["obj_size"]
    blocks = sorted(_mapped_blocks(old, block) | _mapped_blocks(new, block))
    progress(max(0, size - len(blocks) * block))  # the blocks skipped
    written = 0
    for index in blocks:
        offset = index * block
        n = min(block, size - offset)
        data = old.read(offset, n)
        if data != new.read(offset, n):
            new.write(data, offset)
            written += n
        progress(n)
    return written


def _mapped_blocks(img: Any, block: int) -> set[int]:
    """Indexes of the ``block``-sized blocks of ``img`` (its parent's data
    included) that hold data."""
    out: set[int] = set()

    def add(offset: int, length: int, exists: bool) -> None:
        if exists:
            out.update(range(offset // block, (offset + length - 1) // block + 1))

    img.diff_iterate(0, img.size(), None, add, include_parent=True)
    return out


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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def succeed(self, old: ImageStore) -> None:
        """The old store's open pool, if on the same pool: every reload made
        a store and its pool's connection was never closed. A worker thread
        still using the old store keeps the same RbdPool object; nothing is
        closed under it."""
        if isinstance(old, CephImageStore) and old._pool is not None and self._pool is None \
                and old.cfg.storage.place == self.cfg.storage.place:
            self._pool, old._pool = old._pool, None

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
            try:
                self.create_overlay(machine)
            except CephImageError:
                if not self.pool.exists(machine.hostname):
                    raise
                made = False  # another server, starting too, made it meanwhile: the same disk
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

    # -- bootsvc image commit, rebase, check ------------------------------------------

    def _disk(self, host: str) -> str:
        """The name of a machine's disk in the pool, which must be there."""
        name = self.machine(host).hostname
        if not self.pool.exists(name):
            raise CephImageError(f"{host} has no disk in pool {self.pool.pool} yet")
        return name

    def commit(self, host: str, new_base: str, replace: bool = False) -> str:
        """A new base, named ``new_base`` without its extension (the name a
        profile's ``base:`` file maps to), with what the machine sees now;
        refused while a server has the disk. The ``rbd:`` base made."""
        name = Path(new_base).stem
        self.pool.commit(self._disk(host), name, replace=replace)
        where = f"{PREFIX}{self.pool.pool}/{name}@{BASE_SNAP}"
        self.bus.emit(Kind.IMAGE_COMMITTED, hostname=host, base=where)
        return where

    def rebase(self, host: str, new_base: str) -> None:
        """The machine's disk made a clone of ``new_base`` (without its
        extension) with its contents kept (RbdPool.rebase); refused while a
        server has the disk."""
        disk, name = self._disk(host), Path(new_base).stem
        with progress(self.pool.size(disk), f"rebase {host}") as bar:
            written = self.pool.rebase(disk, name, bar.update)
        self.bus.emit(Kind.IMAGE_REBASED, hostname=host, base=f"{PREFIX}{self.pool.pool}/{name}@{BASE_SNAP}",
                      bytes=written)

    def check(self, hosts: list[str], repair: bool = False) -> list[CheckReport]:
        """RBD has no qcow2 metadata to check: per machine, that its disk
        is there, a clone of a protected ``base`` snapshot, with no lock
        held by a client that is gone and no leftover renewal beside it.
        ``repair`` breaks such locks, protects the snapshot and removes the
        leftovers (never one a server has open)."""
        machines = [self.machine(h) for h in hosts] if hosts else \
            sorted(self.machines.values(), key=lambda m: m.hostname)
        names = self.pool.names()
        return [self._check_disk(m, names, bool(hosts), repair) for m in machines]

    def _check_disk(self, m: Machine, names: list[str], named: bool, repair: bool) -> CheckReport:
        host = m.hostname
        report = CheckReport(f"{PREFIX}{self.pool.pool}/{host}", cluster_size=1, leak_kind="stale item(s)")
        leftovers = sorted(n for n in names if (f := _LEFTOVER.fullmatch(n)) and f["host"] == host)
        if host not in names:
            (report.corruptions if named else report.notes).append(
                f"no disk in the pool{'' if named else ' yet (made when a server first serves the machine)'}")
            # a renewal or rebase stopped between its renames: its data is there, left alone
            report.notes.extend(f"{n} is there: rename it to {host} with rbd rename to keep it" for n in leftovers)
            return report
        state = self.pool.state(host)
        report.clusters_used = state.allocated
        if state.parent is None:
            report.notes.append("not a clone (flattened or made by hand)")
        else:
            base, snap = state.parent
            if snap != BASE_SNAP:
                report.corruptions.append(f"a clone of {base}@{snap}, not of a base's {BASE_SNAP} snapshot")
            elif base != self.base_image(m):
                report.notes.append(f"a clone of {base}, not of its profile's base {self.base_image(m)} (rebased)")
            if not state.protected:
                _stale(report, f"{base}@{snap} is not protected", repair, lambda: self.pool.protect(base, snap))
        for owner in state.users.dead_holders:
            _stale(report, f"locked by client {owner}, which is gone", repair,
                   lambda: self.pool.break_dead_locks(host))
        for name in leftovers:
            if self.pool.state(name).users.busy:
                report.notes.append(f"{name}: in use by a server (its next boot's disk)")
                continue
            _stale(report, f"{name} left over", repair, lambda n=name: self.pool.remove_disk(n))
        return report

    def _remove_old(self, host: str) -> None:
        for name in self.pool.names():
            if name.startswith(f".{host}.old."):
                try:
                    self.pool.remove_disk(name)
                except CephImageError:
                    pass  # still open: removed next time
