"""WRITE ATOMIC(16) (SBC-4 §5.48): refused where the backend cannot make
a write all-or-nothing (a raw file), done out of place on a qcow2
overlay, whose image qemu-img then finds clean and right; and after
kill -9 in the middle of atomic writes, no atomic unit holds a mix of
two writes."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.backend import RawBackend, materialize
from target.qcow2 import open_image
from target.qcow2_create import create_image
from target.scsi import Lun, ScsiResult, ScsiStatus
from tests.qcow2_oracle import assert_check_clean, assert_same

SIZE = 8 << 20
UNIT = 1 << 20  # 64 KiB clusters: 16 of them
HERE = Path(__file__).resolve().parent
needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")


def atomic(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, flags, lba, 0, blocks, 0, 0)


def run(lun: Lun, cdb: bytes, data: bytes | None = None) -> ScsiResult:
    return asyncio.run(lun.execute(cdb, memoryview(data) if data is not None else None, "n", len(data or b"")))


def sense_of(r: ScsiResult) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def block_limits(lun: Lun) -> tuple[int, int, int]:
    page = materialize(run(lun, bytes([0x12, 1, 0xB0, 0, 255, 0])).data)
    return struct.unpack_from(">III", page, 44)


@pytest.fixture
def overlay(tmp_path: Path) -> Lun:
    (tmp_path / "base.raw").write_bytes(random.Random(1).randbytes(SIZE))
    create_image(tmp_path / "ov.qcow2", backing="base.raw", backing_format="raw")
    return Lun(open_image(tmp_path / "ov.qcow2", read_only=False))


def test_raw_file_has_no_atomic_writes(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(SIZE))
    lun = Lun(RawBackend(tmp_path / "disk.img"))
    assert block_limits(lun) == (0, 0, 0)
    assert sense_of(run(lun, atomic(0, 1), bytes(512))) == (5, 0x20, 0)
    r = run(lun, bytes([0xA3, 0x0C, 0x01, 0x9C, 0, 0, 0, 0, 1, 0, 0, 0]))
    assert materialize(r.data)[1] & 0x07 == 0x01  # not supported


def test_overlay_advertises_and_writes(overlay: Lun) -> None:
    assert block_limits(overlay) == (UNIT // 512, UNIT // 512, 0)
    data = bytes([0x5A]) * (300 * 512)
    assert run(overlay, atomic(2048, 300, flags=0x08), data).status == ScsiStatus.GOOD
    assert overlay.backend.read_sync(2048 * 512, len(data)) == data


@pytest.mark.parametrize("cdb, sense", [
    (atomic(1, 1), (5, 0x24, 0)),  # not at the alignment
    (atomic(0, UNIT // 512 + 1), (5, 0x24, 0)),  # longer than the maximum
    (atomic(SIZE // 512 - 1, 2), (5, 0x21, 0)),  # past the end
    (atomic(0, 1, flags=0x20), (5, 0x24, 0)),  # WRPROTECT
])
def test_refusals(overlay: Lun, cdb: bytes, sense: tuple[int, int, int]) -> None:
    assert sense_of(run(overlay, cdb, bytes(512 * int.from_bytes(cdb[12:14], "big")))) == sense


def test_short_data_writes_nothing(overlay: Lun) -> None:
    before = overlay.backend.read_sync(0, 4096)
    assert run(overlay, atomic(0, 8), bytes([1]) * 2048).status == ScsiStatus.CHECK_CONDITION
    assert overlay.backend.read_sync(0, 4096) == before


@needs_qemu_img
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, SIZE // UNIT - 1), st.integers(0, UNIT // 512 - 1),
                          st.integers(1, UNIT // 512), st.integers(0, 255), st.booleans()), max_size=12))
def test_atomic_writes_match_qemu(tmp_path: Path, writes: list[tuple[int, int, int, int, bool]]) -> None:
    for p in tmp_path.iterdir():
        p.unlink()
    shadow = bytearray(random.Random(2).randbytes(SIZE))
    (tmp_path / "base.raw").write_bytes(shadow)
    create_image(tmp_path / "ov.qcow2", backing="base.raw", backing_format="raw")
    img = open_image(tmp_path / "ov.qcow2", read_only=False)
    try:
        for unit, start, blocks, fill, flush in writes:
            offset = unit * UNIT + start * 512
            length = min(blocks * 512, (unit + 1) * UNIT - offset)
            img.write_atomic_sync(offset, bytes([fill]) * length, fua=flush)
            shadow[offset:offset + length] = bytes([fill]) * length
        assert img.read_sync(0, SIZE) == shadow
    finally:
        img.close()
    (tmp_path / "expected.raw").write_bytes(shadow)
    assert_check_clean(tmp_path / "ov.qcow2")
    assert_same(tmp_path / "ov.qcow2", tmp_path / "expected.raw")


_WRITER = """
import sys
from target.qcow2 import open_image
img = open_image(sys.argv[1], read_only=False)
unit = img.atomic_unit
n = 0
while True:
    n += 1
    u = n % 8
    img.write_atomic_sync(u * unit, bytes([n % 251 + 1]) * unit, fua=n % 3 == 0)
"""


@needs_qemu_img
def test_kill_during_atomic_writes_leaves_whole_units(tmp_path: Path) -> None:
    """A writer killed at a random moment: every unit reads as one value
    (all of some write or none of it), and the image checks clean."""
    for seed in range(3):
        image = tmp_path / f"ov{seed}.qcow2"
        create_image(image, size=SIZE)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(image)], cwd=HERE.parent,
                                env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        time.sleep(0.5 + random.Random(seed).random())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_check_clean(image, leaks_ok=True)
        img = open_image(image, read_only=True)
        try:
            for u in range(8):
                data = img.read_sync(u * UNIT, UNIT)
                assert data == bytes([data[0]]) * UNIT, f"unit {u} holds parts of two writes"
        finally:
            img.close()
