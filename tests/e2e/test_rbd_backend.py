"""The RBD backend against a real one-node Ceph cluster (tests/ceph_cluster.py):
a machine's disk as a clone of a protected snapshot, read, written,
discarded and flushed through librbd's asynchronous calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from target import librbd
from target.backend import BackendError
from target.rbd import RbdBackend, open_rbd
from target.targets import LunSpec, Target, TargetSpec
from tests.ceph_cluster import Cluster
from tests.e2e.ceph import POOL
from tests.test_rbd_spec import count_wakeups

pytestmark = pytest.mark.e2e

MIB = 1 << 20
SIZE = 64 * MIB


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(256)) * (n // 256)


@pytest.fixture
def clone(ceph_cluster: Cluster) -> Iterator[str]:
    """``rbd:`` name of a clone of a base whose first 8 MiB hold a pattern."""
    import rados
    import rbd

    base, child = f"base-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    with rados.Rados(conffile=str(ceph_cluster.conf)) as cluster, cluster.open_ioctx(POOL) as ioctx:
        rbd.RBD().create(ioctx, base, SIZE)
        with rbd.Image(ioctx, base) as img:
            img.write(_pattern(8 * MIB, 1), 0)
            img.create_snap("gold")
            img.protect_snap("gold")
        rbd.RBD().clone(ioctx, base, "gold", ioctx, child)
    yield f"rbd:{POOL}/{child}:conf={ceph_cluster.conf}"


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _read(b: RbdBackend, offset: int, length: int) -> bytes:
    return b"".join(bytes(s) for s in await b.read(offset, length))  # type: ignore[arg-type]


def test_clone_reads_its_base_and_keeps_its_own_writes(clone: str) -> None:
    parent = _pattern(8 * MIB, 1)

    async def main() -> None:
        b = open_rbd(clone)
        try:
            assert b.size == SIZE and not b.read_only
            assert await _read(b, 0, MIB) == parent[:MIB]
            assert await _read(b, 8 * MIB, 4096) == bytes(4096)  # beyond the base's data
            mine = _pattern(64 * 1024, 9)
            await b.write(4096, memoryview(mine)[:8192])
            await b.write(MIB, mine, fua=True)
            await b.flush()
            got = await _read(b, 0, 2 * MIB)
            want = bytearray(parent[:2 * MIB])
            want[4096:4096 + 8192] = mine[:8192]
            want[MIB:MIB + len(mine)] = mine
            assert got == bytes(want)
            assert b.read_sync(MIB, 512) == mine[:512]
            # many requests in flight at once complete, each with its own data
            writes = [b.write(16 * MIB + i * 4096, bytes([i]) * 4096) for i in range(64)]
            await asyncio.gather(*writes)
            reads = await asyncio.gather(*(_read(b, 16 * MIB + i * 4096, 4096) for i in range(64)))
            assert reads == [bytes([i]) * 4096 for i in range(64)]
        finally:
            b.close()
        # what was written is in the image, for another client
        again = open_rbd(clone)
        try:
            assert await _read(again, MIB, len(mine)) == mine
        finally:
            again.close()

    _run(main())


def test_discard_and_zeroes_hide_the_base(clone: str) -> None:
    parent = _pattern(8 * MIB, 1)

    async def main() -> None:
        b = open_rbd(clone)
        try:
            await b.discard(512, 1024)  # part of an object: zeroed, not skipped
            await b.discard(4 * MIB, 4 * MIB)  # a whole object
            await b.write_zeroes(2 * MIB + 4096, 8192)
            got = await _read(b, 0, 8 * MIB)
            want = bytearray(parent)
            want[512:1536] = bytes(1024)
            want[4 * MIB:8 * MIB] = bytes(4 * MIB)
            want[2 * MIB + 4096:2 * MIB + 12288] = bytes(8192)
            assert got == bytes(want)
            # GET LBA STATUS: the base's data counts as mapped, untouched space does not
            assert await b.block_status(0) == (True, 8 * MIB)
            assert await b.block_status(8 * MIB) == (False, SIZE - 8 * MIB)
            await b.write(20 * MIB, b"w" * 4096)
            assert await b.block_status(8 * MIB) == (False, 12 * MIB)
            assert await b.block_status(20 * MIB) == (True, 4096)
        finally:
            b.close()

    _run(main())


def test_a_snapshot_is_read_only_and_reads_the_base(ceph_cluster: Cluster, clone: str) -> None:
    import rbd

    name = clone.split(":")[1].split("/")[1]
    import rados
    with rados.Rados(conffile=str(ceph_cluster.conf)) as cluster, cluster.open_ioctx(POOL) as ioctx:
        with rbd.Image(ioctx, name) as img:
            base = img.parent_info()[1]
    b = open_rbd(f"rbd:{POOL}/{base}@gold:conf={ceph_cluster.conf}")
    try:
        assert b.read_only
        assert b.read_sync(0, 4096) == _pattern(4096, 1)
    finally:
        b.close()


def test_a_target_serves_an_rbd_lun(clone: str) -> None:
    target = Target.open(TargetSpec("iqn.2026-11.test:rbd", (LunSpec(clone),)))
    try:
        lun = target.luns[0]
        assert lun.blocks * lun.block_size == SIZE and not lun.read_only
    finally:
        target.close()


def test_open_errors_say_what_is_wrong(ceph_cluster: Cluster, tmp_path: Path) -> None:
    conf = ceph_cluster.conf
    cases = {
        f"rbd:{POOL}/missing:conf={conf}": f"cannot open rbd:{POOL}/missing: no such image",
        f"rbd:nopool/x:conf={conf}": "cannot open rbd:nopool/x: no such pool or namespace",
        f"rbd:{POOL}/x:conf={tmp_path}/none.conf": f"cannot connect to the Ceph cluster of {tmp_path}/none.conf: "
                                                  "no such file or directory",
    }
    for name, message in cases.items():
        with pytest.raises(BackendError) as e:
            open_rbd(name)
        assert str(e.value) == message
    assert os.path.exists(conf)


def test_many_reads_in_flight_complete_in_few_wakeups(clone: str) -> None:
    """The eventfd path (target/rbd_completions.py): 512 reads of 4 KiB at
    once, each gets its own data, and the loop is woken far fewer times than
    there are reads (completions are taken in batches)."""
    parent = _pattern(8 * MIB, 1)

    async def main() -> None:
        b = open_rbd(clone)
        try:
            io = b._io
            assert io is not None
            await b.read(0, 512)  # the eventfd is watched from the first request on
            wakeups = count_wakeups(io)
            offsets = [(i * 7919 * 512) % (8 * MIB - 4096) for i in range(512)]
            reads = await asyncio.gather(*(_read(b, off, 4096) for off in offsets))
            assert reads == [parent[off:off + 4096] for off in offsets]
            assert 0 < wakeups[0] < len(offsets) and len(io) == 0
        finally:
            b.close()

    _run(main())


def test_librbd_errors_become_medium_errors(clone: str) -> None:
    """A request librbd fails (here: past the end of the image, and a write
    to a read-only view) is a MediumError saying what failed, not a crash;
    so is one made after the image was closed."""
    from target.backend import MediumError

    async def main() -> None:
        b = open_rbd(clone, read_only=True)
        try:
            with pytest.raises(MediumError, match=r"write of 4096 bytes at 0 failed: Read-only file system"):
                await b.write(0, bytes(4096))
            with pytest.raises(MediumError, match=rf"read of 4096 bytes at {2 * SIZE} failed"):
                await b.read(2 * SIZE, 4096)
            assert (await b.read(SIZE - 512, 512))[0] == bytes(512)
        finally:
            b.close()
        with pytest.raises(MediumError, match="the image is closed"):
            await b.read(0, 512)
        with pytest.raises(MediumError, match="the image is closed"):
            await b.flush()

    _run(main())


def test_close_with_reads_in_flight(clone: str) -> None:
    """Closing the image while reads are in flight waits for them (librbd
    writes into their buffers until they complete), hands them their data,
    and leaves no file descriptor behind; a waiter that gave up is skipped."""
    parent = _pattern(8 * MIB, 1)

    async def main() -> None:
        fds = len(os.listdir("/proc/self/fd"))
        b = open_rbd(clone)
        reads = [asyncio.ensure_future(_read(b, i * 65536, 65536)) for i in range(64)]
        await asyncio.sleep(0)  # every read started
        reads[0].cancel()
        b.close()
        done = await asyncio.gather(*reads[1:])
        assert done == [parent[i * 65536:(i + 1) * 65536] for i in range(1, 64)]
        await asyncio.sleep(0)
        assert len(os.listdir("/proc/self/fd")) <= fds

    _run(main())


def test_librados_io_threads_do_not_preempt_the_loop(ceph_cluster: Cluster) -> None:
    """target/librbd.py makes the io_context_pool threads of the librados
    client it connects SCHED_BATCH (a wake-up by the loop does not preempt
    it); its other threads are untouched. Only that client's threads are
    looked at: other clients of this process (the binding's, for the image
    store; earlier tests') keep theirs."""
    before = set(os.listdir("/proc/self/task"))
    cluster = librbd._connect(str(ceph_cluster.conf), None)  # a client of its own, not the shared one
    try:
        policies: dict[str, set[int]] = {}
        for tid in set(os.listdir("/proc/self/task")) - before:
            with contextlib.suppress(OSError):
                name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                policies.setdefault(name, set()).add(os.sched_getscheduler(int(tid)))
        assert policies["io_context_pool"] == {os.SCHED_BATCH}, policies
        assert policies["msgr-worker-0"] == {os.SCHED_OTHER}, policies
    finally:
        librbd.libs().rados_shutdown(cluster)
