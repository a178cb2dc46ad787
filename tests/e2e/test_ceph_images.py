"""Bases and machine disks in a real RBD pool (bootsvc/ceph_images.py):
clones in O(1), bases with clones kept, renewals, commits, allocated sizes."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from bootsvc.ceph_images import CephImageError, RbdPool
from target.rbd import open_rbd
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL

pytestmark = pytest.mark.e2e

MIB = 1 << 20
SIZE = 32 * MIB
DATA = bytes(range(256)) * (MIB // 256)


def _read(offset: int, length: int) -> bytes:
    """A base of SIZE bytes: the first 2 MiB hold data, the rest zeros."""
    return (DATA * 2 + bytes(SIZE))[offset:offset + length]


def _disk_read(path: str, offset: int, length: int) -> bytes:
    b = open_rbd(path)
    try:
        return b.read_sync(offset, length)
    finally:
        b.close()


def _disk_write(path: str, offset: int, data: bytes) -> None:
    async def write() -> None:
        b = open_rbd(path)
        try:
            await b.write(offset, data, fua=True)
        finally:
            b.close()
    asyncio.run(write())


def test_bases_clones_renewals_and_commits(ceph_cluster: Cluster) -> None:
    tag = uuid.uuid4().hex[:6]
    base, disk, gold = f"b-{tag}", f"node-{tag}", f"g-{tag}"
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        pool.add_base(base, SIZE, _read)
        with pytest.raises(CephImageError, match=f"base {base} already exists in pool {POOL}"):
            pool.add_base(base, SIZE, _read)
        began = time.monotonic()
        pool.clone(base, disk)
        made_in = time.monotonic() - began
        path = pool.lun_path(disk)
        assert _disk_read(path, 0, 2 * MIB) == DATA * 2
        _disk_write(path, 4 * MIB, b"m" * 8192)
        info = {d.name: d for d in pool.disks()}[disk]
        assert info.base == base and info.size == SIZE and 8192 <= info.allocated <= 4 * MIB
        assert {b.name: b.clones for b in pool.bases()}[base] == (disk,)

        # a base with clones is never removed or replaced
        for op in (lambda: pool.remove_base(base), lambda: pool.add_base(base, SIZE, _read, replace=True)):
            with pytest.raises(CephImageError, match=f"base {base} has 1 clone"):
                op()

        # commit: a new base with the disk's contents; the disk stays
        pool.commit(disk, gold)
        assert {b.name for b in pool.bases()} >= {base, gold}
        pool.clone(gold, f"{disk}-2")
        assert _disk_read(pool.lun_path(f"{disk}-2"), 4 * MIB, 8192) == b"m" * 8192
        assert _disk_read(pool.lun_path(f"{disk}-2"), 0, MIB) == DATA

        # renew (an ephemeral disk's new boot): the base's contents again
        pool.renew(base, disk)
        assert _disk_read(path, 4 * MIB, 8192) == bytes(8192)
        assert {d.name: d for d in pool.disks()}[disk].allocated == 0

        # a disk open in a server is not replaced under it
        held = open_rbd(path)
        try:
            with pytest.raises(CephImageError, match="open in another client"):
                pool.clone(base, disk, replace=True)
        finally:
            held.close()

        for name in (disk, f"{disk}-2"):
            pool.remove_disk(name)
        pool.remove_base(gold)
        pool.remove_base(base)
        assert not pool.exists(base)
    print(f"\nclone made in {made_in * 1000:.0f} ms")


def test_pool_errors_are_plain(ceph_cluster: Cluster) -> None:
    with pytest.raises(CephImageError, match="no pool nopool in the cluster"):
        RbdPool("nopool", str(ceph_cluster.conf))
    with RbdPool(POOL, str(ceph_cluster.conf)) as pool:
        with pytest.raises(CephImageError, match=f"no base missing in pool {POOL}"):
            pool.clone("missing", "x")
        with pytest.raises(CephImageError, match=f"no image missing in pool {POOL}"):
            pool.remove_base("missing")
