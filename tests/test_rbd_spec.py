"""The RBD backend's parts that need no cluster: LUN names, the missing
bindings' message, error mapping and the completion hand-over
(tests/e2e/test_rbd_backend.py runs it against a real cluster)."""

from __future__ import annotations

import asyncio
import errno
import sys
import threading

import pytest

from target.backend import BackendError, MediumError, SpaceExhausted
from target.rbd import MISSING_BINDINGS, RbdSpec, _as_bytes, _Bridge, _io_error, open_rbd, parse_spec
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
    monkeypatch.setitem(sys.modules, "rbd", None)  # import rbd raises ImportError
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


def test_completions_from_other_threads_arrive_in_batches() -> None:
    async def main() -> list[tuple[int, object]]:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)
        futures = [loop.create_future() for _ in range(200)]
        drains = 0
        real_drain = bridge._drain

        def counting_drain() -> None:
            nonlocal drains
            drains += 1
            real_drain()

        bridge._drain = counting_drain  # type: ignore[method-assign]
        cancelled = futures.pop()
        cancelled.cancel()
        workers = [threading.Thread(target=lambda part=part: [bridge.complete(f, i, None) for i, f in part])
                   for part in (list(enumerate(futures))[::2], list(enumerate(futures))[1::2])]
        bridge.complete(cancelled, 0, None)  # a waiter that gave up is skipped, not an error
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=10)
        results = await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert drains < len(futures)
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == list(range(199))


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
