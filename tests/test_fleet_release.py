"""Releasing a disk on shared storage its machine stopped using
(bootsvc/fleet.py, storage.release_after): after the grace with no
session, not within it, and claimed again when a login came in while the
release ran. The disk's claim is a stand-in for RBD's lock
(tests/e2e/test_ceph_fleet.py runs the real one across two servers)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bootsvc.config import load
from bootsvc.events import Bus, Kind
from bootsvc.fleet import Fleet
from bootsvc.storage_config import StorageBackend, StorageSettings
from target.backend import Backend, Segment
from tests.test_fleet import A, lab, recorded


class Wrapped(Backend):
    """A disk that passes everything on to ``inner`` (the tests' stand-ins
    change one behaviour each)."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.size, self.read_only = inner, inner.size, False

    async def read(self, offset: int, length: int) -> Sequence[Segment]:
        return await self.inner.read(offset, length)

    def read_sync(self, offset: int, length: int) -> bytes:
        return self.inner.read_sync(offset, length)  # type: ignore[attr-defined,no-any-return]

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        await self.inner.write(offset, data, fua)

    async def flush(self) -> None:
        await self.inner.flush()

    def close(self) -> None:
        self.inner.close()


class Lock(Wrapped):
    """A served disk whose claim is counted; its release may be slowed."""

    def __init__(self, inner: Backend, release_takes: float = 0.0) -> None:
        super().__init__(inner)
        self.holds = False
        self.claims = self.releases = 0
        self.release_takes = release_takes
        self.releasing = threading.Event()

    @property
    def claimed(self) -> bool:
        return self.holds

    def claim(self) -> None:
        self.claims += 1
        self.holds = True

    def release(self) -> None:
        self.releasing.set()
        time.sleep(self.release_takes)
        self.releases += 1
        self.holds = False


def shared(tmp_path: Path, release_takes: float = 0.0) -> tuple[Fleet, Lock, list]:
    """A fleet whose machine a's disk is on 'shared storage', released 1 s after its last session."""
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n")), bus)
    fleet.open()
    fleet.cfg = replace(fleet.cfg, storage=StorageSettings(StorageBackend.CEPH, "pool", release_after=1))
    disk = fleet.disk(A)
    assert disk is not None
    lock = Lock(disk.target.luns[0].backend, release_takes)
    disk.target.luns[0].backend = lock
    return fleet, lock, events


def kinds(events: list) -> list[Kind]:
    return [e.kind for e in events if e.service == "disk"]


def test_a_disk_nobody_uses_is_released_after_the_grace(tmp_path: Path) -> None:
    fleet, lock, events = shared(tmp_path)

    async def main() -> None:
        assert await fleet.claim(A)  # its firmware's DHCP here; it never logs in
        await asyncio.sleep(0.5)
        assert lock.holds
        await asyncio.sleep(1.0)
        assert not lock.holds
        assert await fleet.claim(A)  # the next boot claims again

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    assert (lock.claims, lock.releases) == (2, 1)
    assert kinds(events) == [Kind.DISK_CLAIMED, Kind.DISK_RELEASED, Kind.DISK_CLAIMED]
    released = next(e for e in events if e.kind is Kind.DISK_RELEASED)
    assert released.fields["why"] == "no session for 1 s" and released.mac == A


def test_a_reconnect_within_the_grace_keeps_the_claim(tmp_path: Path) -> None:
    fleet, lock, events = shared(tmp_path)
    disk = fleet.disk(A)
    assert disk is not None
    session = object()

    async def main() -> None:
        assert await fleet.claim(A)
        disk.target.sessions.add(session)  # type: ignore[arg-type]
        fleet.bus.emit(Kind.ISCSI_LOGIN, mac=A)
        await asyncio.sleep(1.2)
        assert lock.holds  # logged in
        disk.target.sessions.clear()
        fleet.bus.emit(Kind.ISCSI_SESSION_DROPPED, mac=A)  # the connection dropped...
        await asyncio.sleep(0.5)
        disk.target.sessions.add(session)  # type: ignore[arg-type]
        fleet.bus.emit(Kind.ISCSI_LOGIN, mac=A)  # ...and came back within the grace
        await asyncio.sleep(1.2)
        assert lock.holds
        disk.target.sessions.clear()
        fleet.bus.emit(Kind.ISCSI_LOGOUT, mac=A)
        await asyncio.sleep(1.3)
        assert not lock.holds

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    assert kinds(events) == [Kind.DISK_CLAIMED, Kind.DISK_RELEASED]


def test_a_login_during_the_release_claims_again(tmp_path: Path) -> None:
    """A fast reboot: the login found the disk still claimed (so its own
    claim did nothing) while the release ran in its thread; once the
    release is done the fleet sees the session and claims again."""
    fleet, lock, events = shared(tmp_path, release_takes=0.3)
    disk = fleet.disk(A)
    assert disk is not None

    async def main() -> None:
        assert await fleet.claim(A)
        await asyncio.to_thread(lock.releasing.wait, 3)
        disk.target.sessions.add(object())  # type: ignore[arg-type]  # admitted while claimed
        await asyncio.sleep(0.6)
        assert lock.holds

    try:
        asyncio.run(main())
    finally:
        fleet.close()
    assert (lock.claims, lock.releases) == (2, 1)
    assert kinds(events) == [Kind.DISK_CLAIMED, Kind.DISK_CLAIMED]


def test_files_are_never_released(tmp_path: Path) -> None:
    """A file is this server's alone: no timer, no event."""
    bus = Bus()
    events = recorded(bus)
    fleet = Fleet(load(lab(tmp_path, f"  {A}: {{hostname: a}}\n")), bus)
    fleet.open()
    try:
        async def main() -> None:
            assert await fleet.claim(A)
            fleet.bus.emit(Kind.ISCSI_LOGOUT, mac=A)
            disk = fleet.disk(A)
            assert disk is not None and disk.idle is None
        asyncio.run(main())
    finally:
        fleet.close()
    assert kinds(events) == []
