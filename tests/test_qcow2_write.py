"""qcow2 writing (copy-on-write overlays), judged by qemu-img: after any mix
of writes, zeroings and flushes the image must pass ``qemu-img check`` and
``qemu-img compare`` must find exactly what was written; after kill -9 at a
random moment, check finds no corruption and every flushed write is there.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.backend import SpaceExhausted
from target.qcow2 import INCOMPAT_DIRTY, Qcow2Error, open_image, parse_header
from target.qcow2_check import check
from target.qcow2_create import create_image, set_backing
from tests.qcow2_oracle import assert_check_clean, assert_same, qemu_img, to_raw

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
SIZE = 4 << 20
HERE = Path(__file__).resolve().parent


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def make_base(path: Path, size: int = SIZE, seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, SIZE // 512 - 1), st.integers(1, 300), st.integers(0, 255)),
    st.tuples(st.just("z"), st.integers(0, SIZE // 512 - 1), st.integers(1, 300), st.just(0)),
    st.tuples(st.just("f"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=40), cluster=st.sampled_from([4096, 65536]),
       backing=st.sampled_from(["raw", "qcow2", None]))
def test_random_workloads_match_qemu(tmp_path: Path, ops: list[tuple[str, int, int, int]], cluster: int,
                                     backing: str | None) -> None:
    for p in tmp_path.iterdir():
        p.unlink()
    shadow = bytearray(SIZE)
    ov = tmp_path / "ov.qcow2"
    if backing:
        shadow[:] = make_base(tmp_path / "base.raw")
        name = "base.raw"
        if backing == "qcow2":
            sh("qemu-img", "convert", "-O", "qcow2", str(tmp_path / "base.raw"), str(tmp_path / "base.qcow2"))
            name = "base.qcow2"
        create_image(ov, backing=name, backing_format=backing, cluster_size=cluster)
    else:
        create_image(ov, size=SIZE, cluster_size=cluster)
    img = open_image(ov, read_only=False)
    try:
        for kind, sector, count, fill in ops:
            offset, length = sector * 512, min(count * 512, SIZE - sector * 512)
            if kind == "w":
                img.write_sync(offset, bytes([fill]) * length)
                shadow[offset:offset + length] = bytes([fill]) * length
            elif kind == "z":
                img.zero_sync(offset, length)
                shadow[offset:offset + length] = bytes(length)
            else:
                img.flush_sync()
        assert img.read_sync(0, SIZE) == shadow
    finally:
        img.close()
    (tmp_path / "expected.raw").write_bytes(shadow)
    assert_check_clean(ov)
    assert_same(ov, tmp_path / "expected.raw")


def test_qemu_made_overlay_and_compressed_clusters(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.raw")
    comp = tmp_path / "comp.qcow2"
    sh("qemu-img", "convert", "-c", "-O", "qcow2", str(tmp_path / "base.raw"), str(comp))
    ov = tmp_path / "ov.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-b", "comp.qcow2", "-F", "qcow2", str(ov))
    expected = bytearray(base)
    for image in (comp, ov):  # compressed clusters rewritten in place; an overlay made by qemu-img
        img = open_image(image, read_only=False)
        img.write_sync(100_000, b"\x5a" * 70_000)
        img.zero_sync(1 << 20, 200 * 1024)
        img.close()
        assert_check_clean(image)
    expected[100_000:170_000] = b"\x5a" * 70_000
    expected[1 << 20:(1 << 20) + 200 * 1024] = bytes(200 * 1024)
    (tmp_path / "expected.raw").write_bytes(expected)
    assert_same(ov, tmp_path / "expected.raw")
    assert qemu_img("info", str(ov)).stdout.count("backing file: comp.qcow2") == 1


def test_refcount_table_grows(tmp_path: Path) -> None:
    """512-byte clusters with 64-bit refcounts: one refcount table cluster
    covers 2 MiB of file, so writing 4 MiB moves the table (twice)."""
    img_path = tmp_path / "small.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", str(img_path), "4M")
    before = parse_header(img_path.read_bytes()[:4096], img_path.stat().st_size).refcount_table_offset
    data = random.Random(3).randbytes(SIZE)
    img = open_image(img_path, read_only=False)
    for off in range(0, SIZE, 256 * 1024):
        img.write_sync(off, data[off:off + 256 * 1024])
    img.close()
    assert parse_header(img_path.read_bytes()[:4096], img_path.stat().st_size).refcount_table_offset != before
    (tmp_path / "expected.raw").write_bytes(data)
    assert_check_clean(img_path)
    assert_same(img_path, tmp_path / "expected.raw")


def test_creation_is_constant_time_and_qemu_reads_it(tmp_path: Path) -> None:
    (tmp_path / "big.raw").touch()
    os.truncate(tmp_path / "big.raw", 1 << 40)  # 1 TiB sparse base
    t = time.perf_counter()
    create_image(tmp_path / "ov.qcow2", backing="big.raw", backing_format="raw")
    assert time.perf_counter() - t < 1.0
    assert (tmp_path / "ov.qcow2").stat().st_size < 1 << 20
    info = qemu_img("info", str(tmp_path / "ov.qcow2")).stdout
    assert "virtual size: 1 TiB" in info and "backing file format: raw" in info
    assert_check_clean(tmp_path / "ov.qcow2")
    with pytest.raises(Qcow2Error, match="exists"):
        create_image(tmp_path / "ov.qcow2", backing="big.raw")


def test_unmap_frees_clusters_for_reuse(tmp_path: Path) -> None:
    ov = tmp_path / "ov.qcow2"
    create_image(ov, size=SIZE)
    img = open_image(ov, read_only=False)
    img.write_sync(0, b"\1" * SIZE)
    img.flush_sync()
    full = img.allocated_bytes()
    img.zero_sync(0, SIZE)
    img.flush_sync()
    assert img.allocated_bytes() < full // 4
    img.write_sync(0, b"\2" * (SIZE // 2))  # reuses the freed clusters: the file does not grow
    img.close()
    assert ov.stat().st_size <= full + (1 << 17)
    assert_check_clean(ov)


def test_size_limit_refuses_before_writing(tmp_path: Path) -> None:
    make_base(tmp_path / "base.raw")
    ov = tmp_path / "ov.qcow2"
    create_image(ov, backing="base.raw", backing_format="raw")
    events: list[str] = []
    img = open_image(ov, read_only=False, limit=2 << 20, on_event=lambda what, f: events.append(what))
    img.write_sync(0, b"\3" * (1600 << 10))  # + metadata: past 90 % of 2 MiB
    assert events == ["qcow2.space_low"]
    before = img.read_sync(0, SIZE)
    with pytest.raises(SpaceExhausted):
        img.write_sync(2 << 20, b"\4" * (512 << 10))
    assert img.read_sync(0, SIZE) == before  # nothing of the refused write landed
    img.write_sync(0, b"\5" * 4096)  # rewriting allocated clusters needs no space
    img.close()
    assert events[-1] == "qcow2.space_exhausted"
    assert_check_clean(ov)


def test_one_writer_at_a_time_and_dirty_bit(tmp_path: Path) -> None:
    ov = tmp_path / "ov.qcow2"
    create_image(ov, size=SIZE)
    img = open_image(ov, read_only=False)
    with pytest.raises(Qcow2Error, match="open for writing by another"):
        open_image(ov, read_only=False)
    raw = ov.read_bytes()[:4096]
    assert parse_header(raw, ov.stat().st_size).incompatible & INCOMPAT_DIRTY
    img.close()
    assert not parse_header(ov.read_bytes()[:4096], ov.stat().st_size).incompatible & INCOMPAT_DIRTY


def test_autoclear_bits_are_cleared(tmp_path: Path) -> None:
    ov = tmp_path / "ov.qcow2"
    create_image(ov, size=SIZE)
    with open(ov, "r+b") as f:
        f.seek(95)
        f.write(b"\x80")  # an autoclear feature nobody here knows
    open_image(ov, read_only=False).close()
    assert parse_header(ov.read_bytes()[:4096], ov.stat().st_size).autoclear == 0


def test_rebase_header(tmp_path: Path) -> None:
    make_base(tmp_path / "a.raw", seed=1)
    shutil.copy(tmp_path / "a.raw", tmp_path / "b.raw")
    ov = tmp_path / "ov.qcow2"
    create_image(ov, backing="a.raw", backing_format="raw")
    set_backing(ov, "b.raw", "raw")
    info = qemu_img("info", str(ov)).stdout
    assert "backing file: b.raw" in info
    assert_check_clean(ov)


def replay(log: str, baseline: bytes) -> tuple[bytearray, list[tuple[int, bytes]]]:
    """The durable image after a crash log, and the writes that may or may
    not have landed (after the last completed flush)."""
    durable = bytearray(baseline)
    pending: list[tuple[int, bytes]] = []
    for line in log.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "F":
            for offset, data in pending:
                durable[offset:offset + len(data)] = data
            pending.clear()
        elif parts[0] == "W" and len(parts) == 4:
            offset, length, seed = map(int, parts[1:])
            pending.append((offset, random.Random(seed).randbytes(length)))
        elif parts[0] == "Z" and len(parts) == 3:
            offset, length = map(int, parts[1:])
            pending.append((offset, bytes(length)))
    return durable, pending


def crashed_image_holds(image: Path, log: str, before: bytes, iteration: int) -> bytes:
    """The image a kill left (a copy of it): no corruption, every sector
    holds its flushed data or data written after the last flush. Returns
    what it holds."""
    assert_check_clean(image, leaks_ok=True)
    actual = to_raw(image, image.with_suffix(".raw"))
    durable, pending = replay(log, before)
    for sector in range(0, SIZE, 512):
        got = actual[sector:sector + 512]
        if got == durable[sector:sector + 512]:
            continue
        candidates = [data[sector - off:sector - off + 512] for off, data in pending
                      if off <= sector < off + len(data)]
        assert got in candidates, f"iteration {iteration}: sector {sector // 512} holds data never written"
    image.unlink()
    image.with_suffix(".raw").unlink()
    return actual


def test_crash_loop(tmp_path: Path) -> None:
    """kill -9 at random moments, 50 times, on one overlay: no corruption,
    every flushed write is there, every sector holds its flushed data or
    data written after the last flush, and the next open repairs leaks.
    Each crash is judged on a copy of the image, in a thread, while the
    next writer already runs on the image itself (the judging would
    otherwise add half the loop's time)."""
    base = make_base(tmp_path / "base.raw")
    ov = tmp_path / "ov.qcow2"
    create_image(ov, backing="base.raw", backing_format="raw", cluster_size=16384)
    rnd = random.Random(2026)
    judged: Future[bytes] | None = None
    with ThreadPoolExecutor(1) as judge:
        for iteration in range(50):
            log = tmp_path / f"log-{iteration}"
            proc = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(ov), str(log),
                                     str(iteration), "3000"])
            time.sleep(rnd.uniform(0.25, 0.9))
            proc.kill()
            proc.wait(10)
            current = judged.result() if judged is not None else base  # the image before this writer
            crashed = tmp_path / f"crashed-{iteration}.qcow2"  # beside ov: the same relative backing file
            shutil.copyfile(ov, crashed)
            judged = judge.submit(crashed_image_holds, crashed, log.read_text() if log.exists() else "", current,
                                  iteration)
        assert judged is not None
        judged.result()
    img = open_image(ov, read_only=False)  # the repair on open leaves nothing leaked
    img.close()
    assert_check_clean(ov)


def test_check_finds_leaks_and_repairs(tmp_path: Path) -> None:
    ov = tmp_path / "ov.qcow2"
    create_image(ov, size=SIZE)
    img = open_image(ov, read_only=False)
    img.write_sync(0, b"\1" * 65536)
    img.flush_sync()
    img.refs.alloc()  # counted, never referenced: a leak
    img.refs.alloc()
    img.flush_sync()
    report = check(img)
    assert (report.leaks, report.corruptions) == (2, [])
    assert qemu_img("check", str(ov)).returncode == 3  # qemu-img agrees: leaks
    report = check(img, repair=True)
    assert report.leaks_fixed == 2
    img.close()
    assert_check_clean(ov)


def test_concurrent_io_through_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads, writes, zeroings and flushes from many coroutines at once, as
    an iSCSI session issues them, with an L2 cache of two tables so tables
    are evicted and reloaded all the time: every read sees what was last
    written there, and the image ends clean and exact."""
    import asyncio

    from target import qcow2

    monkeypatch.setattr(qcow2, "L2_CACHE_TABLES", 2)
    base = make_base(tmp_path / "base.raw")
    ov = tmp_path / "ov.qcow2"
    create_image(ov, backing="base.raw", backing_format="raw", cluster_size=512)  # 32 KiB per L2 table
    shadow = bytearray(base)
    slots = 64  # each coroutine owns SIZE / slots bytes, so no two overlap

    async def worker(img: qcow2.Qcow2Backend, slot: int) -> None:
        rnd = random.Random(slot)
        span = SIZE // slots
        for _ in range(30):
            offset = slot * span + rnd.randrange(span // 512) * 512
            length = min(rnd.choice((512, 4096, 9216)), slot * span + span - offset)
            if rnd.random() < 0.8:
                data = rnd.randbytes(length)
                await img.write(offset, data)
                shadow[offset:offset + length] = data
            else:
                await img.write_zeroes(offset, length)
                shadow[offset:offset + length] = bytes(length)
            assert await img.read_bytes(offset, length) == shadow[offset:offset + length]
            if rnd.random() < 0.1:
                await img.flush()

    async def main() -> None:
        img = open_image(ov, read_only=False)
        try:
            await asyncio.gather(*(worker(img, s) for s in range(slots)))
            assert await img.read_bytes(0, SIZE) == shadow
        finally:
            img.close()

    asyncio.run(main())
    (tmp_path / "expected.raw").write_bytes(shadow)
    assert_check_clean(ov)
    assert_same(ov, tmp_path / "expected.raw")
