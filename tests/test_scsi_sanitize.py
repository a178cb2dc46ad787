"""SANITIZE (SBC-3 §5.30) and software write protect (SPC-4 §7.5.8)
without a network: the CDB and parameter-list checks, what each service
action leaves on the medium, the in-progress and failure-mode gates, and
malformed input that must end in CHECK CONDITION."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.backend import MediumError, RawBackend, materialize
from target.scsi import Lun, ScsiResult, ScsiStatus
from target.scsi.sanitize import parse_cdb, parse_overwrite, pattern_block
from target.scsi.sense import ScsiError

BLOCKS = 2048
TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])


def _lun(tmp_path: Path, fill: int = 0x61, read_only: bool = False) -> Lun:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes([fill]) * (BLOCKS * 512))
    lun = Lun(RawBackend(p, read_only=read_only), read_only=read_only)
    lun.sanitize_rate = 1 << 40  # no pacing in unit tests
    return lun


@pytest.fixture
def lun(tmp_path: Path) -> Lun:
    return _lun(tmp_path)


def sanitize_cdb(sa: int, plen: int = 0, immed: bool = False) -> bytes:
    return bytes([0x48, sa | (0x80 if immed else 0), 0, 0, 0, 0, 0]) + plen.to_bytes(2, "big") + b"\0"


def overwrite_list(pattern: bytes, passes: int = 1, invert: bool = False) -> bytes:
    return bytes([(0x80 if invert else 0) | passes, 0]) + len(pattern).to_bytes(2, "big") + pattern


async def execute(lun: Lun, cdb: bytes, data: bytes | None = None, nexus: str = "n") -> ScsiResult:
    return await lun.execute(cdb, memoryview(data) if data is not None else None, nexus, len(data or b""))


def run(lun: Lun, cdb: bytes, data: bytes | None = None, nexus: str = "n") -> ScsiResult:
    return asyncio.run(execute(lun, cdb, data, nexus))


def sense_of(r: ScsiResult) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def medium(lun: Lun) -> bytes:
    return lun.backend.read_sync(0, BLOCKS * 512)


@pytest.mark.parametrize("cdb", [
    bytes([0x48, 0x41, 0, 0, 0, 0, 0, 0, 0, 0]),  # reserved bit
    bytes([0x48, 0x02, 0, 0, 7, 0, 0, 0, 0, 0]),  # reserved byte
    bytes([0x48, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]),  # no such service action
    sanitize_cdb(0x02, 8),  # BLOCK ERASE takes no parameter list
    sanitize_cdb(0x01, 4),  # OVERWRITE: at least one byte of pattern
    sanitize_cdb(0x01, 512 + 5),  # and at most one block
])
def test_bad_cdbs(cdb: bytes) -> None:
    with pytest.raises(ScsiError) as e:
        parse_cdb(cdb, 512)
    assert e.value.asc.asc == 0x24


@pytest.mark.parametrize("data", [
    overwrite_list(b"\xaa", passes=0),
    bytes([0x01, 0, 0, 0]) + b"\xaa",  # pattern length 0
    bytes([0x01, 0, 0x02, 0x04]) + bytes(516),  # pattern longer than a block
    bytes([0x01, 0, 0, 8]) + b"\xaa" * 4,  # pattern length past the list
    bytes([0x21, 0, 0, 1, 0xaa]),  # TEST
])
def test_bad_overwrite_lists(data: bytes) -> None:
    with pytest.raises(ScsiError) as e:
        parse_overwrite(data, 512)
    assert e.value.asc.asc == 0x26 and not e.value.in_cdb


def test_pattern_fills_the_block_and_inverts() -> None:
    assert pattern_block(b"abc", 8) == b"abcabcab"
    assert pattern_block(b"\x0f", 2, inverted=True) == b"\xf0\xf0"


def test_overwrite_writes_every_block_every_pass(lun: Lun) -> None:
    data = overwrite_list(b"\x5a\xa5\x00", passes=2, invert=True)
    r = run(lun, sanitize_cdb(0x01, len(data)), data)
    assert r.status == ScsiStatus.GOOD, r.sense
    assert medium(lun) == pattern_block(b"\x5a\xa5\x00", 512, inverted=True) * BLOCKS  # the last pass inverted


@pytest.mark.parametrize("sa", [0x02, 0x03])
def test_erase_deallocates_everything(lun: Lun, sa: int) -> None:
    assert run(lun, sanitize_cdb(sa)).status == ScsiStatus.GOOD
    assert medium(lun) == bytes(BLOCKS * 512)
    r = run(lun, bytes([0x9E, 0x12]) + bytes(8) + (64).to_bytes(4, "big") + bytes(2))  # GET LBA STATUS
    lba, blocks, status = struct.unpack_from(">QIB", materialize(r.data), 8)
    assert (lba, blocks, status & 0x0F) == (0, BLOCKS, 1)


def test_commands_wait_while_a_sanitize_runs(lun: Lun) -> None:
    lun.sanitize_rate = 4 << 20  # 1 MiB takes a quarter of a second

    async def scenario() -> list[ScsiResult]:
        data = overwrite_list(b"\x00")
        started = await execute(lun, sanitize_cdb(0x01, len(data), immed=True), data)
        during = [await execute(lun, cdb) for cdb in (TUR, INQUIRY, bytes([0x28]) + bytes(9))]
        assert lun.sanitize is not None and lun.sanitize.task is not None
        await lun.sanitize.task
        return [started, *during, await execute(lun, TUR)]

    started, tur, inquiry, read, after = asyncio.run(scenario())
    assert started.status == inquiry.status == after.status == ScsiStatus.GOOD
    assert sense_of(tur) == sense_of(read) == (2, 0x04, 0x1B)


def test_a_cancelled_command_leaves_the_sanitize_running(lun: Lun) -> None:
    """The connection that sent it dropped: the sanitize goes on."""
    lun.sanitize_rate = 8 << 20

    async def scenario() -> None:
        data = overwrite_list(b"\x11")
        command = asyncio.get_running_loop().create_task(execute(lun, sanitize_cdb(0x01, len(data)), data))
        await asyncio.sleep(0.02)
        command.cancel()
        assert lun.sanitize is not None and lun.sanitize.task is not None
        await lun.sanitize.task

    asyncio.run(scenario())
    assert medium(lun) == b"\x11" * BLOCKS * 512 and lun.sanitize is None


class _FailingWrites(RawBackend):
    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        raise MediumError("the disk is gone")


def test_failure_mode_until_exit(tmp_path: Path) -> None:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(BLOCKS * 512))
    lun = Lun(_FailingWrites(p))
    data = overwrite_list(b"\x22")

    async def scenario() -> Sequence[ScsiResult]:
        return [await execute(lun, sanitize_cdb(0x01, len(data)), data), await execute(lun, TUR),
                await execute(lun, sanitize_cdb(0x1F)), await execute(lun, TUR)]

    failed, in_failure_mode, exit_, after = asyncio.run(scenario())
    assert sense_of(failed) == sense_of(in_failure_mode) == (3, 0x31, 0x03)
    assert exit_.status == after.status == ScsiStatus.GOOD


def test_read_only_lun_is_write_protected(tmp_path: Path) -> None:
    ro = _lun(tmp_path, read_only=True)
    assert sense_of(run(ro, sanitize_cdb(0x02))) == (7, 0x27, 0)


def test_reservation_conflict(lun: Lun) -> None:
    assert run(lun, bytes([0x16, 0, 0, 0, 0, 0]), nexus="other").status == ScsiStatus.GOOD  # RESERVE(6)
    assert run(lun, sanitize_cdb(0x02)).status == ScsiStatus.RESERVATION_CONFLICT
    assert medium(lun) == b"\x61" * BLOCKS * 512


def test_report_supported_opcodes_lists_each_service_action(lun: Lun) -> None:
    for sa in (0x01, 0x02, 0x03, 0x1F):
        r = run(lun, bytes([0xA3, 0x0C, 0x02, 0x48, 0, sa, 0, 0, 1, 0, 0, 0]))
        assert materialize(r.data)[1] & 0x07 == 0x03


def mode_select6(swp: bool) -> tuple[bytes, bytes]:
    control = bytearray([0x0A, 0x0A]) + bytes(10)
    control[4] = 0x08 if swp else 0
    data = bytes(4) + bytes(control)
    return bytes([0x15, 0x10, 0, 0, len(data), 0]), data


def test_software_write_protect(lun: Lun) -> None:
    write = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert run(lun, *mode_select6(True)).status == ScsiStatus.GOOD
    assert sense_of(run(lun, write, bytes(512))) == (7, 0x27, 0)
    sense = materialize(run(lun, bytes([0x1A, 0, 0x0A, 0, 255, 0])).data)
    assert sense[2] & 0x80 and sense[4 + 8 + 4] & 0x08  # WP in the header, SWP in the page
    assert run(lun, *mode_select6(False)).status == ScsiStatus.GOOD
    assert run(lun, write, bytes(512)).status == ScsiStatus.GOOD


def test_truncated_mode_page_is_a_length_error(lun: Lun) -> None:
    _, data = mode_select6(True)
    assert sense_of(run(lun, bytes([0x15, 0x10, 0, 0, 10, 0]), data[:10])) == (5, 0x1A, 0)
    assert not lun.software_write_protect


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(min_size=10, max_size=10), st.binary(max_size=600))
def test_random_sanitize_commands_never_crash(lun: Lun, cdb: bytes, data: bytes) -> None:
    cdb = bytes([0x48, cdb[1] & 0x7F]) + cdb[2:]  # without IMMED: done when the command is
    r = run(lun, cdb, data)
    assert r.status in (ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION)
    assert lun.sanitize is None
