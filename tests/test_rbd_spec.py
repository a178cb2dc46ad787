"""The RBD backend's parts that need no cluster: LUN names, the missing
bindings' message, error mapping and the completion poller against a
stand-in for librbd (tests/e2e/test_rbd_backend.py runs them against a
real cluster)."""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import threading
from typing import Any

import pytest

from target import librbd, rbd_completions
from target.backend import BackendError, MediumError, SpaceExhausted
from target.rbd import MISSING_BINDINGS, RbdSpec, _as_bytes, _io_error, open_rbd, parse_spec
from target.targets import LunSpec, Target, TargetConfigError, TargetSpec


@pytest.mark.parametrize("text, spec", [
    ("rbd:pool/img", RbdSpec("pool", "img")),
    ("rbd:pool/ns/img", RbdSpec("pool", "img", namespace="ns")),
    ("rbd:pool/img@base", RbdSpec("pool", "img", snapshot="base")),
    ("rbd:p/i:conf=/etc/ceph/ceph.conf:id=boot", RbdSpec("p", "i", conf="/etc/ceph/ceph.conf", user="boot")),
    ("rbd:p/n/i@s:id=boot", RbdSpec("p", "i", "n", "s", None, "boot")),
])
def test_names(text: str, spec: RbdSpec) -> None:
    assert parse_spec(text) == spec
    assert f"rbd:{spec.name}" == text.split(":conf=")[0].split(":id=")[0]


@pytest.mark.parametrize("text", [
    "rbd:", "rbd:pool", "rbd:/img", "rbd:pool/", "rbd:a/b/c/d", "rbd:pool/img@", "rbd:pool/img@a@b",
    "rbd:pool/img:conf", "rbd:pool/img:conf=", "rbd:pool/img:user=x", "rbd:pool/img:id=a:id=b", "pool/img",
])
def test_bad_names(text: str) -> None:
    with pytest.raises(BackendError) as e:
        parse_spec(text)
    assert str(e.value).startswith(text + ": ")


def test_missing_bindings_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(librbd, "_libs", None)
    monkeypatch.setattr(librbd, "LIBRBD", "librbd-not-installed.so.1")  # dlopen fails
    with pytest.raises(BackendError) as e:
        open_rbd("rbd:pool/img")
    assert str(e.value) == MISSING_BINDINGS == "storage backend ceph needs python3-rbd: apt install python3-rbd"


def test_a_target_with_a_bad_rbd_name_is_a_clear_error() -> None:
    spec = TargetSpec("iqn.2026-11.test:rbd", (LunSpec("rbd:onlypool"),))
    with pytest.raises((BackendError, TargetConfigError), match="rbd:POOL"):
        Target.open(spec)


def test_views_of_whole_bytes_are_not_copied() -> None:
    data = b"x" * 4096
    assert _as_bytes(data) is data
    assert _as_bytes(memoryview(data)) is data
    assert _as_bytes(memoryview(data)[:512]) == b"x" * 512
    assert _as_bytes(memoryview(bytearray(b"ab"))) == b"ab"


def test_errors_map_to_scsi_kinds() -> None:
    assert isinstance(_io_error("p/i", "write", errno.ENOSPC), SpaceExhausted)
    assert isinstance(_io_error("p/i", "write", errno.EDQUOT), SpaceExhausted)
    fenced = _io_error("p/i", "write", errno.ESHUTDOWN)
    assert isinstance(fenced, MediumError) and "lock" in str(fenced)
    e = _io_error("p/i", "read of 512 bytes at 0", errno.EIO)
    assert type(e) is MediumError and str(e) == "rbd:p/i: read of 512 bytes at 0 failed: Input/output error"


class FakeLibrbd:
    """librbd's completion calls as target/rbd_completions.py uses them: a
    request completes when :meth:`finish` (another thread) queues it and
    writes the image's eventfd, as librbd's own threads do."""

    def __init__(self) -> None:
        self.fd = -1
        self.queued: collections.deque[int] = collections.deque()
        self.results: dict[int, int] = {}
        self.released: set[int] = set()
        self.polls = 0
        self._next = 0x1000

    def rbd_set_image_notification(self, image: int, fd: int, kind: int) -> int:
        assert kind == librbd.EVENT_TYPE_EVENTFD
        self.fd = fd
        return 0

    def rbd_aio_create_completion(self, arg: Any, cb: Any, out: Any) -> int:
        self._next += 8
        out._obj.value = self._next
        return 0

    def rbd_aio_read(self, image: int, offset: int, length: int, buf: bytes, comp: Any) -> int:
        self.results[comp.value] = length if offset >= 0 else -errno.EIO
        return 0

    def finish(self, comps: list[int]) -> None:
        for c in comps:
            self.queued.append(c)
            os.eventfd_write(self.fd, 1)

    def rbd_aio_wait_for_complete(self, comp: int) -> int:
        if comp not in self.queued:  # completes now, as librbd would in a while
            self.finish([comp])
        return 0

    def rbd_poll_io_events(self, image: int, batch: Any, n: int) -> int:
        self.polls += 1
        i = 0
        while i < n and self.queued:
            batch[i] = self.queued.popleft()
            i += 1
        return i

    def rbd_aio_get_return_value(self, comp: int) -> int:
        return self.results[comp]

    def rbd_aio_release(self, comp: Any) -> None:
        comp = getattr(comp, "value", comp)  # a c_void_p or an int, as ctypes passes either
        assert comp not in self.released
        self.released.add(comp)


def count_wakeups(io: rbd_completions.Completions) -> list[int]:
    """The loop's wake-ups by ``io``'s eventfd counted from now on (in the
    list's one item); the eventfd must be watched already (a request made)."""
    wakeups = [0]
    take = io._take

    def counting_take() -> None:
        wakeups[0] += 1
        take()

    loop = asyncio.get_running_loop()
    loop.remove_reader(io._fd)
    loop.add_reader(io._fd, counting_take)
    return wakeups


def test_completions_from_other_threads_arrive_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibrbd()
    monkeypatch.setattr(rbd_completions, "libs", lambda: fake)

    async def main() -> None:
        io = rbd_completions.Completions(image=1)
        offsets = list(range(599)) + [-1]  # the last one fails
        futures = [io.start(fake.rbd_aio_read, off, 512, b"", keep=off) for off in offsets]
        wakeups = count_wakeups(io)
        futures[1].cancel()  # a waiter that gave up is skipped, not an error
        comps = list(fake.results)
        workers = [threading.Thread(target=fake.finish, args=(part,)) for part in (comps[::2], comps[1::2])]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=10)
        results = await asyncio.wait_for(asyncio.gather(*futures[2:]), 10)
        assert futures[0].result() == 512 and results == [512] * 597 + [-errno.EIO]
        assert len(io) == 0 and fake.released == set(comps)
        assert 0 < wakeups[0] < len(comps) and fake.polls < len(comps)  # more than one batch, far fewer than one each
        io.close()
        assert io._fd == -1

    asyncio.run(main())


def test_close_from_another_thread_with_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet may close an image off the loop: close() waits for what is
    in flight, its waiters get their results on their loop, and the eventfd
    is closed there too, after the loop stopped watching it."""
    fake = FakeLibrbd()
    monkeypatch.setattr(rbd_completions, "libs", lambda: fake)

    async def main() -> None:
        io = rbd_completions.Completions(image=1)
        fd = io._fd
        futures = [io.start(fake.rbd_aio_read, off, 512, b"") for off in range(300)]
        await asyncio.get_running_loop().run_in_executor(None, io.close)
        assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [512] * 300
        assert len(io) == 0 and len(fake.released) == 300 and io._fd == -1
        await asyncio.sleep(0)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed

    asyncio.run(main())


def test_a_refused_request_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibrbd()
    monkeypatch.setattr(rbd_completions, "libs", lambda: fake)

    async def main() -> None:
        io = rbd_completions.Completions(image=1)
        with pytest.raises(librbd.CephError) as e:
            io.start(lambda image, comp: -errno.EINVAL)
        assert e.value.errno == errno.EINVAL and len(fake.released) == 1 and len(io) == 0
        io.close()

    asyncio.run(main())


@pytest.mark.parametrize("extents, status", [
    ([], (False, 1000)),
    ([(300, 100)], (False, 200)),
    ([(100, 50), (150, 50), (260, 10)], (True, 100)),
    ([(0, 150), (100, 5000)], (True, 1000)),  # clipped to the window
])
def test_allocation_runs(extents: list[tuple[int, int]], status: tuple[bool, int]) -> None:
    from target.rbd import _first_run
    assert _first_run(100, 1000, extents) == status


def test_an_rbd_export_is_named_after_its_image() -> None:
    from pathlib import Path

    from bootsvc.cli import default_iqn, export_name
    assert export_name("rbd:disks/ns/node01@gold:conf=/etc/ceph/ceph.conf:id=boot") == Path("node01")
    assert default_iqn(export_name("rbd:disks/node01:conf=/x/ceph.conf")) == "iqn.2026-11.io.bootsvc:node01"
    assert export_name("rbd:bad") == Path("rbd:bad") and export_name("a/disk.img") == Path("a/disk.img")
