"""The SCSI command set without a network: sense data for errors, and random
CDBs that must always end in a ScsiResult, never an exception."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.backend import BackendError, MediumError, RawBackend, materialize
from target.scsi import Lun, ScsiResult, ScsiStatus, no_such_lun, report_luns
from target.scsi.sense import POWER_ON_RESET

BLOCKS = 2048


@pytest.fixture
def lun(tmp_path: Path) -> Lun:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * (BLOCKS * 2))
    return Lun(RawBackend(p), serial="abc", device_id=bytes(range(16)))


def run(lun: Lun, cdb: bytes, data: bytes | None = None, edtl: int = 65536) -> ScsiResult:
    return asyncio.run(lun.execute(cdb, memoryview(data) if data is not None else None, "n", edtl))


def sense_of(r: ScsiResult) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def data_of(r: ScsiResult) -> bytes:
    return materialize(r.data)


def test_read_beyond_end_is_lba_out_of_range(lun: Lun) -> None:
    r = run(lun, struct.pack(">BBIBHB", 0x28, 0, BLOCKS - 1, 0, 2, 0))
    assert r.status == ScsiStatus.CHECK_CONDITION and sense_of(r) == (5, 0x21, 0)


def test_unknown_opcode(lun: Lun) -> None:
    r = run(lun, bytes([0xC7]) + bytes(15))
    assert sense_of(r) == (5, 0x20, 0)


def test_read_only_refuses_writes(tmp_path: Path) -> None:
    p = tmp_path / "ro.img"
    p.write_bytes(bytes(1 << 20))
    ro = Lun(RawBackend(p, read_only=True), read_only=True)
    r = run(ro, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0), bytes(512))
    assert sense_of(r) == (7, 0x27, 0)


def test_write_then_read(lun: Lun) -> None:
    payload = bytes([7]) * 1024
    assert run(lun, struct.pack(">BBQIBB", 0x8A, 0x08, 10, 2, 0, 0), payload).status == ScsiStatus.GOOD
    r = run(lun, struct.pack(">BBQIBB", 0x88, 0, 10, 2, 0, 0))
    assert data_of(r) == payload


def test_compare_and_write_miscompare_reports_offset(lun: Lun) -> None:
    current = data_of(run(lun, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)))
    expected = bytearray(current)
    expected[100] ^= 0xFF
    cdb = struct.pack(">BBQ3xB2x", 0x89, 0, 0, 1)
    r = run(lun, cdb, bytes(expected) + bytes(512), edtl=1024)
    assert sense_of(r) == (0x0E, 0x1D, 0) and int.from_bytes(r.sense[3:7], "big") == 100


def test_inquiry_vpd_pages(lun: Lun) -> None:
    pages = data_of(run(lun, bytes([0x12, 1, 0x00, 0, 255, 0])))
    assert list(pages[4:]) == [0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]
    ident = data_of(run(lun, bytes([0x12, 1, 0x83, 0, 255, 0])))
    assert ident[4:8] == bytes([1, 3, 0, 16]) and ident[8] >> 4 == 6  # NAA 6
    assert run(lun, bytes([0x12, 0, 0x83, 0, 255, 0])).status == ScsiStatus.CHECK_CONDITION


def test_unmap_reads_zeros(lun: Lun) -> None:
    params = struct.pack(">HH4xQI4x", 22, 16, 0, 8)
    assert run(lun, struct.pack(">BB5xHB", 0x42, 0, len(params), 0), params).status == ScsiStatus.GOOD
    assert data_of(run(lun, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 8, 0))) == bytes(4096)


def test_unit_attention_after_reset_then_clear(lun: Lun) -> None:
    tur = bytes(6)
    assert run(lun, tur).status == ScsiStatus.GOOD
    lun.reset()
    r = run(lun, tur)
    assert sense_of(r) == (6, 0x29, 0x03)
    assert run(lun, tur).status == ScsiStatus.GOOD
    lun.reset(POWER_ON_RESET)  # a target reset: a hard reset's code
    assert sense_of(run(lun, tur)) == (6, 0x29, 0x00)


def test_report_luns_and_missing_lun() -> None:
    r = report_luns([0, 1, 300], struct.pack(">BB4xIBB", 0xA0, 0, 4096, 0, 0))
    data = b"".join(bytes(s) for s in r.data)
    assert int.from_bytes(data[:4], "big") == 24 and data[16:18] == b"\x00\x01" and data[24:26] == b"\x41\x2c"
    assert no_such_lun(bytes([0x12, 0, 0, 0, 36, 0])).data[0][0] == 0x7F  # type: ignore[index]
    assert no_such_lun(bytes(6)).status == ScsiStatus.CHECK_CONDITION


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(opcode=st.sampled_from([0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2E, 0x2F,
                               0x35, 0x41, 0x42, 0x55, 0x5A, 0x88, 0x89, 0x8A, 0x8F, 0x93, 0x9E, 0xA3, 0xA8,
                               0xFF]) | st.integers(0, 255),
       rest=st.binary(min_size=0, max_size=31), data=st.none() | st.binary(max_size=2048),
       edtl=st.integers(0, 1 << 20))
def test_random_cdbs_never_raise(lun: Lun, opcode: int, rest: bytes, data: bytes | None, edtl: int) -> None:
    r = run(lun, bytes([opcode]) + rest, data, edtl)
    assert isinstance(r, ScsiResult)
    assert r.status in (ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION)


def test_inquiry_names_a_neutral_product_by_default(lun: Lun) -> None:
    std = data_of(run(lun, bytes([0x12, 0, 0, 0, 96, 0])))
    assert std[8:16] == b"PYISCSI " and std[16:32] == b"iSCSI disk".ljust(16)


def test_inquiry_names_the_embedders_product(tmp_path: Path) -> None:
    from target.targets import LunSpec, Target, TargetSpec

    p = tmp_path / "disk.img"
    p.write_bytes(bytes(1 << 20))
    target = Target.open(TargetSpec("iqn.2026-11.test:named", (LunSpec(str(p)),), vendor="BOOTSVC",
                                    product="bootsvc disk"))
    try:
        std = data_of(run(target.luns[0], bytes([0x12, 0, 0, 0, 96, 0])))
        assert std[8:16] == b"BOOTSVC " and std[16:32] == b"bootsvc disk".ljust(16)
        t10 = data_of(run(target.luns[0], bytes([0x12, 1, 0x83, 0, 255, 0])))
        assert b"BOOTSVC " in t10
    finally:
        target.close()


@pytest.mark.parametrize("error", [MediumError("EIO"), BackendError("bad compressed cluster")])
def test_a_backend_that_cannot_read_answers_medium_error(lun: Lun, error: BackendError) -> None:
    """An unreadable medium or image (a corrupt qcow2 cluster) is MEDIUM
    ERROR / UNRECOVERED READ ERROR, on the READ hot path and after a unit
    attention alike, not an exception the session turns into BUSY forever."""
    async def failing(offset: int, length: int) -> object:
        raise error
    lun.backend.read = failing  # type: ignore[method-assign]
    read10 = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
    for _ in range(2):  # the first command of the nexus takes the general path (unit attention), then the hot one
        r = run(lun, read10)
        if sense_of(r)[0] == 6:
            continue
        assert r.status == ScsiStatus.CHECK_CONDITION and sense_of(r) == (3, 0x11, 0), sense_of(r)


def test_orwrite_sets_bits(lun: Lun) -> None:
    block = bytes([0x0F]) * 512
    assert run(lun, struct.pack(">BBQIBB", 0x8A, 0, 3, 1, 0, 0), block, 512).status == ScsiStatus.GOOD
    r = run(lun, struct.pack(">BBQIBB", 0x8B, 0, 3, 1, 0, 0), bytes([0xF0, 0x01]) * 256, 512)
    assert r.status == ScsiStatus.GOOD and r.data_out_length == 512
    got = data_of(run(lun, struct.pack(">BBQIBB", 0x88, 0, 3, 1, 0, 0)))
    assert got == bytes([0xFF, 0x0F]) * 256


def test_orwrite_refuses_protection_and_the_end_of_the_medium(lun: Lun) -> None:
    assert sense_of(run(lun, struct.pack(">BBQIBB", 0x8B, 0x20, 0, 1, 0, 0), bytes(512), 512)) == (5, 0x24, 0)
    assert sense_of(run(lun, struct.pack(">BBQIBB", 0x8B, 0, BLOCKS, 1, 0, 0), bytes(512), 512)) == (5, 0x21, 0)


def test_read_defect_data_is_an_empty_list(lun: Lun) -> None:
    assert data_of(run(lun, bytes([0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0]))) == bytes([0, 0x18, 0, 0])
    assert data_of(run(lun, bytes([0xB7, 0x0D]) + bytes(4) + (32).to_bytes(4, "big") + bytes(2))) == \
        bytes([0, 0x0D]) + bytes(6)
