"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS without a network: the
parameter-list checks, copies within and between the LUNs of one target,
reservations, and malformed lists that must end in CHECK CONDITION."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.backend import RawBackend, materialize
from target.scsi import Lun, ScsiResult, ScsiStatus
from target.scsi.inquiry import naa_id
from target.scsi.xcopy import LIMITS, parse_copy_list
from target.targets import _copy_within

BLOCKS = 4096


def _lun(tmp_path: Path, name: str, fill: int, lun_id: int = 0, read_only: bool = False) -> Lun:
    p = tmp_path / name
    p.write_bytes(bytes([fill]) * (BLOCKS * 512))
    return Lun(RawBackend(p, read_only=read_only), lun_id=lun_id, device_id=bytes([lun_id + 1]) * 16,
               read_only=read_only)


@pytest.fixture
def lun(tmp_path: Path) -> Lun:
    return _lun(tmp_path, "a.img", 0)


def run(lun: Lun, cdb: bytes, data: bytes | None = None, nexus: str = "n") -> ScsiResult:
    return asyncio.run(lun.execute(cdb, memoryview(data) if data is not None else None, nexus,
                                   len(data) if data else 0))


def sense_of(r: ScsiResult) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def target_descriptor(lun: Lun, kind: int = 0xE4, block_size: int = 512) -> bytes:
    naa = naa_id(lun.identity.device_id)
    return (bytes([kind, 0, 0, 0, 0x01, 0x03, 0, len(naa)]) + naa).ljust(28, b"\0") + block_size.to_bytes(4, "big")


def segment(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, kind: int = 0x02) -> bytes:
    return struct.pack(">BBHHH2xHQQ", kind, 0, 0x18, src, dst, blocks, src_lba, dst_lba)


def copy_list(targets: list[bytes], segments: list[bytes], list_id: int = 1, usage: int = 0) -> bytes:
    t, s = b"".join(targets), b"".join(segments)
    return struct.pack(">BBH4xII", list_id, usage << 3, len(t), len(s), 0) + t + s


def xcopy(lun: Lun, data: bytes, nexus: str = "n") -> ScsiResult:
    return run(lun, bytes([0x83, 0]) + bytes(8) + len(data).to_bytes(4, "big") + bytes(2), data, nexus)


def rcr(lun: Lun, sa: int, list_id: int = 0, nexus: str = "n") -> ScsiResult:
    return run(lun, bytes([0x84, sa, list_id]) + bytes(7) + (1024).to_bytes(4, "big") + bytes(2), nexus=nexus)


def read(lun: Lun, lba: int, blocks: int) -> bytes:
    return lun.backend.read_sync(lba * 512, blocks * 512)


def test_copy_within_one_lun(lun: Lun) -> None:
    asyncio.run(lun.backend.write(0, memoryview(b"A" * 512 * 8)))
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 8, 0, BLOCKS - 8)]))
    assert r.status == ScsiStatus.GOOD, r.sense
    assert read(lun, BLOCKS - 8, 8) == b"A" * 4096


def test_overlapping_copy_upwards_is_a_move(lun: Lun) -> None:
    """A destination above an overlapping source gets the source as it was."""
    data = bytes(range(256)) * 2 * 3000  # 3000 blocks, more than one chunk
    asyncio.run(lun.backend.write(0, memoryview(data)))
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 3000, 0, 1000)]))
    assert r.status == ScsiStatus.GOOD
    assert read(lun, 1000, 3000) == data


def test_copy_between_luns_of_one_target(tmp_path: Path) -> None:
    a, b = _lun(tmp_path, "a.img", 0x11, 0), _lun(tmp_path, "b.img", 0x22, 1)
    _copy_within({0: a, 1: b})
    r = xcopy(a, copy_list([target_descriptor(b), target_descriptor(a)], [segment(0, 1, 16, 100, 200)]))
    assert r.status == ScsiStatus.GOOD
    assert read(a, 200, 16) == b"\x22" * 16 * 512 and read(a, 199, 1) == b"\x11" * 512


def test_a_lun_of_another_target_is_not_reachable(tmp_path: Path) -> None:
    a, other = _lun(tmp_path, "a.img", 0, 0), _lun(tmp_path, "o.img", 0, 5)
    r = xcopy(a, copy_list([target_descriptor(a), target_descriptor(other)], [segment(0, 1, 1, 0, 0)]))
    assert sense_of(r) == (0x0A, 0x0D, 0x02)


def test_read_only_destination_is_write_protected(tmp_path: Path) -> None:
    a, ro = _lun(tmp_path, "a.img", 0, 0), _lun(tmp_path, "ro.img", 0, 1, read_only=True)
    _copy_within({0: a, 1: ro})
    r = xcopy(a, copy_list([target_descriptor(a), target_descriptor(ro)], [segment(0, 1, 1, 0, 0)]))
    assert sense_of(r) == (7, 0x27, 0)


def test_reserved_destination_conflicts(lun: Lun) -> None:
    assert run(lun, bytes([0x16, 0, 0, 0, 0, 0]), nexus="other").status == ScsiStatus.GOOD  # RESERVE(6)
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 1, 0, 1)]))
    assert r.status == ScsiStatus.RESERVATION_CONFLICT


@pytest.mark.parametrize("targets, segments, sense", [
    (LIMITS.max_targets + 1, 1, (5, 0x26, 0x06)),
    (1, LIMITS.max_segments + 1, (5, 0x26, 0x08)),
])
def test_too_many_descriptors(lun: Lun, targets: int, segments: int, sense: tuple[int, int, int]) -> None:
    r = xcopy(lun, copy_list([target_descriptor(lun)] * targets, [segment(0, 0, 1, 0, 1)] * segments))
    assert sense_of(r) == sense


def test_unsupported_descriptor_types(lun: Lun) -> None:
    r = xcopy(lun, copy_list([target_descriptor(lun, kind=0xE0)], [segment(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (5, 0x26, 0x07)
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 1, 0, 1, kind=0x03)]))
    assert sense_of(r) == (5, 0x26, 0x09)


def test_truncated_list_and_empty_list(lun: Lun) -> None:
    whole = copy_list([target_descriptor(lun)], [segment(0, 0, 1, 0, 1)])
    assert sense_of(xcopy(lun, whole[:-1])) == (5, 0x1A, 0)
    assert xcopy(lun, b"").status == ScsiStatus.GOOD


def test_beyond_the_end_and_bad_index_abort_the_copy(lun: Lun) -> None:
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 8, 0, BLOCKS - 1)]))
    assert sense_of(r)[0] == 0x0A
    r = xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 1, 8, 0, 0)]))
    assert sense_of(r) == (0x0A, 0x0D, 0x02)


def test_copy_status_reported_once_per_nexus(lun: Lun) -> None:
    assert sense_of(rcr(lun, 0, 7)) == (5, 0x24, 0)
    assert xcopy(lun, copy_list([target_descriptor(lun)], [segment(0, 0, 4, 0, 8)], list_id=7)).status == 0
    assert sense_of(rcr(lun, 0, 7, nexus="someone else")) == (5, 0x24, 0)
    r = rcr(lun, 0, 7)
    data = materialize(r.data)
    assert r.status == ScsiStatus.GOOD and data[4] == 0x01 and struct.unpack_from(">H", data, 5)[0] == 1
    assert rcr(lun, 0, 7).status == ScsiStatus.CHECK_CONDITION


def test_operating_parameters(lun: Lun) -> None:
    data = materialize(rcr(lun, 3).data)
    assert struct.unpack_from(">HHI", data, 8) == (LIMITS.max_targets, LIMITS.max_segments,
                                                   LIMITS.max_descriptor_list)
    assert int.from_bytes(data[0:4], "big") == len(data) - 4 and data[44:46] == bytes([0x02, 0xE4])


def tpc_descriptors(page: bytes) -> dict[int, bytes]:
    """VPD page 8Fh cut into its third-party copy descriptors (SPC-4
    §7.8.17.2), each checked to be padded to four bytes."""
    assert page[1] == 0x8F and int.from_bytes(page[2:4], "big") == len(page) - 4
    out: dict[int, bytes] = {}
    pos = 4
    while pos < len(page):
        kind, length = struct.unpack_from(">HH", page, pos)
        assert length % 4 == 0 and kind not in out
        out[kind] = page[pos + 4:pos + 4 + length]
        pos += 4 + length
    assert pos == len(page)
    return out


def test_third_party_copy_vpd_page_says_what_the_copy_manager_does(lun: Lun) -> None:
    """VPD 8Fh (SPC-4 §7.8.17), listed in VPD 00h, agrees with RECEIVE COPY
    RESULTS (OPERATING PARAMETERS) and with what EXTENDED COPY accepts."""
    supported = materialize(run(lun, bytes([0x12, 1, 0x00, 0, 255, 0])).data)
    assert 0x8F in supported[4:]
    page = materialize(run(lun, bytes([0x12, 1, 0x8F, 0x04, 0, 0])).data)
    d = tpc_descriptors(page)
    assert list(d) == [0x0001, 0x0004, 0x0008, 0x000C, 0x8001]
    commands = d[0x0001]  # §7.8.17.4: COMMANDS SUPPORTED LIST LENGTH, then opcode, SA count, SAs
    assert commands[:commands[0] + 1] == bytes([7, 0x83, 1, 0x00, 0x84, 2, 0x00, 0x03])
    assert not any(commands[commands[0] + 1:])  # padding
    params = d[0x0004]  # §7.8.17.5
    assert len(params) == 0x1C and not any(params[:4]) and not any(params[16:])
    op = materialize(rcr(lun, 3).data)
    assert struct.unpack_from(">HHII", params, 4) == (*struct.unpack_from(">HHI", op, 8), 0)  # no inline data
    descriptors = d[0x0008]  # §7.8.17.6: the segment and CSCD descriptor types, as RCR lists them
    assert descriptors[:descriptors[0] + 1] == bytes([2, 0x02, 0xE4]) == op[43:46]
    assert d[0x000C] == bytes(4)  # §7.8.17.7: no CSCD descriptor ids (LID1 names CSCDs by index)
    general = d[0x8001]  # §7.8.17.10
    assert len(general) == 0x20
    total, identified, max_segment, granularity, inline = struct.unpack_from(">IIIBB", general)
    assert (total, identified, inline) == (1, 1, 0) and not any(general[14:])
    assert max_segment == int.from_bytes(op[16:20], "big") and granularity == op[37] == 9  # 512-byte blocks
    # the allocation length cuts it as any page (SPC-4 §4.2.5.6)
    assert materialize(run(lun, bytes([0x12, 1, 0x8F, 0, 8, 0])).data) == page[:8]


@pytest.mark.skipif(not shutil.which("sg_vpd"), reason="needs sg_vpd (sg3-utils)")
def test_sg_vpd_reads_the_third_party_copy_page(lun: Lun, tmp_path: Path) -> None:
    """sg3-utils' decoder of page 8Fh, not ours, reads every descriptor."""
    page = tmp_path / "8f.bin"
    page.write_bytes(materialize(run(lun, bytes([0x12, 1, 0x8F, 0x04, 0, 0])).data))
    out = subprocess.run(["sg_vpd", f"--inhex={page}", "--raw", "--page=0x8f"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "Unexpected" not in out.stdout + out.stderr, out
    for line in ("Extended copy(LID1)", "Receive copy status(LID1)", "Receive copy operating parameters",
                 "Maximum CSCD descriptor count: 4", "Maximum segment descriptor count: 64",
                 "Maximum descriptor list length: 4096", "block -> block [0x2]",
                 "CSCD: Identification Descriptor [0xe4]", "General copy operations",
                 "Total concurrent copies: 1", "Data segment granularity: 512"):
        assert line in out.stdout, (line, out.stdout)


def test_unknown_service_actions_are_bad_fields(lun: Lun) -> None:
    assert sense_of(rcr(lun, 0x04)) == (5, 0x24, 0)
    assert sense_of(run(lun, bytes([0x83, 0x01]) + bytes(14))) == (5, 0x24, 0)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=200), st.integers(0, 255), st.integers(0, 255))
def test_malformed_lists_never_crash(lun: Lun, noise: bytes, at: int, value: int) -> None:
    good = bytearray(copy_list([target_descriptor(lun)], [segment(0, 0, 1, 0, 1)]))
    good[at % len(good)] = value
    for data in (bytes(good), noise, bytes(good) + noise):
        r = xcopy(lun, data)
        assert r.status in (ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION)
        if r.status == ScsiStatus.CHECK_CONDITION:
            assert sense_of(r)[0] in (0x05, 0x0A, 0x07)


@given(st.binary(max_size=400))
def test_parser_raises_only_scsi_errors(data: bytes) -> None:
    from target.scsi.sense import ScsiError
    try:
        parse_copy_list(data)
    except ScsiError:
        pass
