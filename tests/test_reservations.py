"""Persistent reservations (SPC-4 §5.12) and RESERVE/RELEASE(6) without a
network: CDBs through Lun.execute from two I_T nexuses, as iSCSI sessions
give them (initiator name, ISID, target name)."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Hashable
from pathlib import Path

import pytest

from target.backend import RawBackend, materialize
from target.scsi import Lun, ScsiResult, ScsiStatus
from target.scsi.reservations import (PrOut, PrType, Reservations, ProutParams, parse_prout, parse_transport_id,
                                      transport_id)
from target.scsi.sense import ScsiError

T = "iqn.2026-11.test:disk"
A = ("iqn.2026-11.test:a", bytes.fromhex("400000000001"), T)
B = ("iqn.2026-11.test:b", bytes.fromhex("400000000002"), T)
C = ("iqn.2026-11.test:c", bytes.fromhex("400000000003"), T)
WATCHER = ("iqn.2026-11.test:watcher", bytes.fromhex("400000000004"), T)  # reads state, never registers
CONFLICT = ScsiStatus.RESERVATION_CONFLICT
GOOD = ScsiStatus.GOOD

READ10 = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
WRITE10 = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)
TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])


@pytest.fixture
def lun(tmp_path: Path) -> Lun:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(1 << 20))
    return Lun(RawBackend(p), reservations=tmp_path / "pr" / "0.json")


def run(lun: Lun, nexus: Hashable, cdb: bytes, data: bytes | None = None) -> ScsiResult:
    edtl = len(data) if data is not None else 4096
    return asyncio.run(lun.execute(cdb, memoryview(data) if data is not None else None, nexus, edtl))


def sense(r: ScsiResult) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def prout(lun: Lun, nexus: Hashable, sa: int, key: int = 0, sa_key: int = 0, pr_type: int = 0, flags: int = 0,
          body: bytes | None = None) -> ScsiResult:
    if body is None:
        body = struct.pack(">QQ4xBx2x", key, sa_key, flags)
    cdb = struct.pack(">BBB2xIB", 0x5F, sa, pr_type, len(body), 0)
    return run(lun, nexus, cdb, body)


def prin(lun: Lun, nexus: Hashable, sa: int, alloc: int = 4096) -> bytes:
    r = run(lun, nexus, struct.pack(">BB5xHB", 0x5E, sa, alloc, 0))
    assert r.status == GOOD, sense(r)
    return materialize(r.data)


def keys(lun: Lun) -> tuple[int, list[int]]:
    data = prin(lun, WATCHER, 0)
    generation, length = struct.unpack_from(">II", data)
    return generation, [int.from_bytes(data[8 + i:16 + i], "big") for i in range(0, length, 8)]


def reservation(lun: Lun) -> tuple[int, int] | None:
    data = prin(lun, WATCHER, 1)
    if struct.unpack_from(">I", data, 4)[0] == 0:
        return None
    return int.from_bytes(data[8:16], "big"), data[21] & 0x0F


def register(lun: Lun, nexus: Hashable, key: int) -> None:
    assert prout(lun, nexus, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=key).status == GOOD


def clear_attentions(lun: Lun, *nexuses: Hashable) -> None:
    for n in nexuses:
        for _ in range(8):
            if run(lun, n, TUR).status != ScsiStatus.CHECK_CONDITION:
                break


# -- REGISTER -------------------------------------------------------------------------------


def test_register_change_and_unregister(lun: Lun) -> None:
    assert prout(lun, A, PrOut.REGISTER, key=0, sa_key=0x11).status == GOOD
    assert keys(lun) == (1, [0x11])
    assert prout(lun, A, PrOut.REGISTER, key=0x99, sa_key=0x12).status == CONFLICT  # wrong key
    assert prout(lun, A, PrOut.REGISTER, key=0x11, sa_key=0x12).status == GOOD
    assert prout(lun, B, PrOut.REGISTER, key=0x5, sa_key=0x6).status == CONFLICT  # not registered, key given
    assert prout(lun, A, PrOut.REGISTER, key=0x12, sa_key=0).status == GOOD
    assert keys(lun) == (3, [])


def test_register_and_ignore_replaces_any_key(lun: Lun) -> None:
    register(lun, A, 1)
    register(lun, A, 2)
    assert keys(lun)[1] == [2]
    register(lun, A, 0)
    assert keys(lun)[1] == []


def test_parameter_list_must_be_24_bytes(lun: Lun) -> None:
    r = prout(lun, A, PrOut.REGISTER, body=bytes(20))
    assert r.status == ScsiStatus.CHECK_CONDITION and sense(r) == (5, 0x1A, 0)


def test_spec_i_pt_and_all_tg_pt_are_refused(lun: Lun) -> None:
    for flag in (0x08, 0x04):
        r = prout(lun, A, PrOut.REGISTER, sa_key=1, flags=flag)
        assert sense(r) == (5, 0x26, 0)


# -- RESERVE, RELEASE and what others may do --------------------------------------------------

# (type, registered B reads, registered B writes, unregistered C reads, unregistered C writes)
ACCESS = [
    (PrType.WRITE_EXCLUSIVE, True, False, True, False),
    (PrType.EXCLUSIVE_ACCESS, False, False, False, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, True, True, True, False),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, True, True, False, False),
    (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, True, True, True, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, True, True, False, False),
]


@pytest.mark.parametrize("pr_type, b_read, b_write, c_read, c_write", ACCESS)
def test_access_under_each_type(lun: Lun, pr_type: PrType, b_read: bool, b_write: bool, c_read: bool,
                                c_write: bool) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    assert prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=pr_type).status == GOOD
    assert reservation(lun) == (0 if pr_type.all_registrants else 0xA, pr_type)
    block = bytes(512)
    assert run(lun, A, READ10).status == GOOD and run(lun, A, WRITE10, block).status == GOOD
    assert (run(lun, B, READ10).status == GOOD) is b_read
    assert (run(lun, B, WRITE10, block).status == GOOD) is b_write
    assert (run(lun, C, READ10).status == GOOD) is c_read
    assert (run(lun, C, WRITE10, block).status == GOOD) is c_write
    # always allowed: INQUIRY, TEST UNIT READY, PERSISTENT RESERVE IN
    assert run(lun, C, INQUIRY).status == GOOD and run(lun, C, TUR).status == GOOD
    prin(lun, C, 0)


def test_reserve_needs_the_registered_key_and_a_free_lun(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    assert prout(lun, A, PrOut.RESERVE, key=0xB, pr_type=1).status == CONFLICT
    assert prout(lun, C, PrOut.RESERVE, key=0, pr_type=1).status == CONFLICT
    assert prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=1).status == GOOD
    assert prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=1).status == GOOD  # again: no change
    assert prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=3).status == CONFLICT  # another type
    assert prout(lun, B, PrOut.RESERVE, key=0xB, pr_type=1).status == CONFLICT


def test_bad_type_and_scope_are_invalid_fields(lun: Lun) -> None:
    register(lun, A, 0xA)
    for scope_type in (0x02, 0x09, 0x11):
        r = prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=scope_type)
        assert sense(r) == (5, 0x24, 0)


def test_release_by_holder_with_other_type_is_invalid_release(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=1)
    assert prout(lun, B, PrOut.RELEASE, key=0xB, pr_type=1).status == GOOD  # not the holder: nothing
    assert reservation(lun) == (0xA, 1)
    assert sense(prout(lun, A, PrOut.RELEASE, key=0xA, pr_type=3)) == (5, 0x26, 0x04)
    assert prout(lun, A, PrOut.RELEASE, key=0xA, pr_type=1).status == GOOD
    assert reservation(lun) is None


def test_release_of_registrants_only_tells_the_others(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert prout(lun, A, PrOut.RELEASE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY).status == GOOD
    r = run(lun, B, READ10)
    assert sense(r) == (6, 0x2A, 0x04)  # RESERVATIONS RELEASED
    assert run(lun, B, READ10).status == GOOD
    assert run(lun, A, READ10).status == GOOD  # not to the one that released


def test_unregistering_the_holder_ends_the_reservation(lun: Lun) -> None:
    register(lun, A, 0xA)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS)
    register(lun, A, 0)
    assert reservation(lun) is None
    assert run(lun, B, READ10).status == GOOD


def test_all_registrants_reservation_lasts_until_the_last_registrant(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    register(lun, A, 0)
    assert reservation(lun) == (0, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS)
    assert run(lun, C, READ10).status == CONFLICT
    register(lun, B, 0)
    assert reservation(lun) is None


# -- CLEAR, PREEMPT -----------------------------------------------------------------------------


def test_clear_removes_everything_and_tells_the_others(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=1)
    generation = keys(lun)[0]
    assert prout(lun, A, PrOut.CLEAR, key=0xA).status == GOOD
    assert keys(lun) == (generation + 1, []) and reservation(lun) is None
    assert sense(run(lun, B, TUR)) == (6, 0x2A, 0x03)  # RESERVATIONS PREEMPTED
    assert run(lun, A, TUR).status == GOOD


def test_preempt_registration_without_reservation(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    generation = keys(lun)[0]
    assert prout(lun, B, PrOut.PREEMPT, key=0xB, sa_key=0xA, pr_type=3).status == GOOD
    assert keys(lun) == (generation + 1, [0xB])
    assert sense(run(lun, A, TUR)) == (6, 0x2A, 0x05)  # REGISTRATIONS PREEMPTED
    assert prout(lun, B, PrOut.PREEMPT, key=0xB, sa_key=0x77, pr_type=3).status == CONFLICT  # no such key
    assert sense(prout(lun, B, PrOut.PREEMPT, key=0xB, sa_key=0, pr_type=3)) == (5, 0x26, 0)


@pytest.mark.parametrize("sa", [PrOut.PREEMPT, PrOut.PREEMPT_AND_ABORT])
def test_preempt_takes_the_reservation(lun: Lun, sa: PrOut) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE)
    assert prout(lun, B, sa, key=0xB, sa_key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS).status == GOOD
    assert reservation(lun) == (0xB, PrType.EXCLUSIVE_ACCESS)
    assert keys(lun)[1] == [0xB]
    assert sense(run(lun, A, READ10)) == (6, 0x2A, 0x05)
    assert run(lun, A, READ10).status == CONFLICT


def test_preempt_all_registrants_with_key_zero(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    register(lun, C, 0xC)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    assert prout(lun, B, PrOut.PREEMPT, key=0xB, sa_key=0, pr_type=PrType.WRITE_EXCLUSIVE).status == GOOD
    assert keys(lun)[1] == [0xB] and reservation(lun) == (0xB, PrType.WRITE_EXCLUSIVE)


# -- REGISTER AND MOVE, READ FULL STATUS, REPORT CAPABILITIES ----------------------------------


def move_body(key: int, sa_key: int, tid: bytes, unreg: bool = False) -> bytes:
    return struct.pack(">QQxBxxI", key, sa_key, 0x02 if unreg else 0, len(tid)) + tid


def test_register_and_move(lun: Lun) -> None:
    register(lun, A, 0xA)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS)
    r = prout(lun, A, PrOut.REGISTER_AND_MOVE, pr_type=PrType.WRITE_EXCLUSIVE,
              body=move_body(0xA, 0xB, transport_id(B), unreg=True))
    assert r.status == GOOD, sense(r)
    assert reservation(lun) == (0xB, PrType.WRITE_EXCLUSIVE)
    assert keys(lun)[1] == [0xB]
    assert run(lun, B, WRITE10, bytes(512)).status == GOOD
    assert run(lun, A, WRITE10, bytes(512)).status == CONFLICT


def test_register_and_move_refusals(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    body = move_body(0xA, 0xC, transport_id(C))
    assert prout(lun, A, PrOut.REGISTER_AND_MOVE, pr_type=1, body=body).status == CONFLICT  # holds nothing
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=1)
    assert sense(prout(lun, A, PrOut.REGISTER_AND_MOVE, pr_type=1, body=move_body(0xA, 0xC, transport_id(A)))) \
        == (5, 0x26, 0)  # to itself
    assert sense(prout(lun, A, PrOut.REGISTER_AND_MOVE, pr_type=1, body=move_body(0xA, 0xC, b"\x45\0\0\x14abc" + bytes(17)))) \
        == (5, 0x26, 0)  # a port without its ISID
    assert sense(prout(lun, A, PrOut.REGISTER_AND_MOVE, pr_type=1, body=move_body(0xA, 0, transport_id(C)))) \
        == (5, 0x26, 0)  # no key to give


def test_read_full_status(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, B, PrOut.RESERVE, key=0xB, pr_type=PrType.EXCLUSIVE_ACCESS)
    data = prin(lun, A, 3)
    length = struct.unpack_from(">I", data, 4)[0]
    pos, seen = 8, []
    while pos < 8 + length:
        key, flags, scope_type, tid_len = struct.unpack_from(">Q4xBB6xI", data, pos)
        tid = data[pos + 24:pos + 24 + tid_len]
        seen.append((key, flags & 1, scope_type, parse_transport_id(tid)))
        pos += 24 + tid_len
    assert seen == [(0xA, 0, 0, (A[0], A[1])), (0xB, 1, PrType.EXCLUSIVE_ACCESS, (B[0], B[1]))]


def test_report_capabilities(lun: Lun, tmp_path: Path) -> None:
    data = prin(lun, A, 2)
    assert data[:2] == b"\0\x08" and data[2] & 0x01  # PTPL_C: this LUN has a place for APTPL
    assert int.from_bytes(data[4:6], "big") == 0xEA01
    plain = Lun(RawBackend(tmp_path / "disk.img"))
    assert not prin(plain, A, 2)[2] & 0x01
    assert sense(prout(plain, A, PrOut.REGISTER, sa_key=1, flags=0x01)) == (5, 0x26, 0)


def test_unknown_service_actions(lun: Lun) -> None:
    assert sense(run(lun, A, struct.pack(">BB5xHB", 0x5E, 4, 64, 0))) == (5, 0x24, 0)
    assert sense(prout(lun, A, 0x08, sa_key=1)) == (5, 0x24, 0)


def test_report_supported_opcodes_lists_them(lun: Lun) -> None:
    r = run(lun, A, struct.pack(">BBBBHIxB", 0xA3, 0x0C, 0, 0, 0, 8192, 0))
    data = materialize(r.data)
    listed = {(data[4 + i], int.from_bytes(data[6 + i:8 + i], "big")) for i in range(0, len(data) - 4, 8)}
    assert {(0x5E, sa) for sa in range(4)} | {(0x5F, sa) for sa in range(8)} | {(0x16, 0), (0x17, 0)} <= listed


# -- unit attentions stay per nexus; resets ------------------------------------------------------


def test_persistent_reservation_survives_lun_reset_and_nexus_loss(lun: Lun) -> None:
    register(lun, A, 0xA)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS)
    lun.reset()
    lun.nexus_lost(A)
    assert reservation(lun) == (0xA, PrType.EXCLUSIVE_ACCESS)
    clear_attentions(lun, B)
    assert run(lun, B, READ10).status == CONFLICT


# -- RESERVE(6) / RELEASE(6) ---------------------------------------------------------------------

RESERVE6, RELEASE6 = bytes([0x16, 0, 0, 0, 0, 0]), bytes([0x17, 0, 0, 0, 0, 0])


def test_reserve6_between_two_initiators(lun: Lun) -> None:
    assert run(lun, A, RESERVE6).status == GOOD
    assert run(lun, A, RESERVE6).status == GOOD
    assert run(lun, B, RESERVE6).status == CONFLICT
    assert run(lun, B, RELEASE6).status == GOOD  # not the holder: nothing happens
    assert run(lun, B, bytes([0x1A, 0, 0x3F, 0, 255, 0])).status == CONFLICT  # MODE SENSE
    assert run(lun, B, READ10).status == CONFLICT
    assert run(lun, B, INQUIRY).status == GOOD
    assert run(lun, A, READ10).status == GOOD
    assert run(lun, A, RELEASE6).status == GOOD
    assert run(lun, B, RESERVE6).status == GOOD


@pytest.mark.parametrize("end", ["reset", "nexus_lost"])
def test_reserve6_ends_with_reset_or_nexus_loss(lun: Lun, end: str) -> None:
    run(lun, A, RESERVE6)
    lun.reset() if end == "reset" else lun.nexus_lost(A)
    clear_attentions(lun, B)
    assert run(lun, B, RESERVE6).status == GOOD


def test_reserve6_and_persistent_reservations_conflict(lun: Lun) -> None:
    register(lun, A, 0xA)
    assert run(lun, B, RESERVE6).status == CONFLICT  # SPC-4 annex B: any registration
    assert run(lun, A, RELEASE6).status == CONFLICT
    register(lun, A, 0)
    assert run(lun, A, RESERVE6).status == GOOD
    assert prout(lun, B, PrOut.REGISTER, sa_key=0xB).status == CONFLICT
    assert run(lun, B, struct.pack(">BB5xHB", 0x5E, 0, 64, 0)).status == CONFLICT


# -- APTPL -----------------------------------------------------------------------------------------


def test_aptpl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pr" / "0.json"
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    first = Lun(RawBackend(disk), reservations=path)
    assert prout(first, A, PrOut.REGISTER, sa_key=0xA, flags=0x01).status == GOOD
    assert prout(first, B, PrOut.REGISTER, sa_key=0xB, flags=0x01).status == GOOD
    prout(first, A, PrOut.RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE)
    assert json.loads(path.read_text())["type"] == PrType.WRITE_EXCLUSIVE
    again = Lun(RawBackend(disk), reservations=path)  # a restart
    assert keys(again) == keys(first) and reservation(again) == (0xA, PrType.WRITE_EXCLUSIVE)
    assert prin(again, A, 2)[3] & 0x01  # PTPL_A
    assert run(again, B, WRITE10, bytes(512)).status == CONFLICT
    assert prout(again, B, PrOut.REGISTER, key=0xB, sa_key=0xB2).status == GOOD  # APTPL 0 now: forgotten
    assert not path.exists()
    assert keys(Lun(RawBackend(disk), reservations=path)) == (0, [])


def test_aptpl_keeps_the_target_port(tmp_path: Path) -> None:
    """An iSCSI nexus names its portal group (docs/multipath.md): the same
    initiator port through two groups is two registrations, kept apart
    across a restart; a file from before portal groups still loads."""
    path = tmp_path / "0.json"
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    path_1, path_2 = (*A, 1), (*A, 2)
    first = Lun(RawBackend(disk), reservations=path)
    assert prout(first, path_1, PrOut.REGISTER, sa_key=0xA1, flags=0x01).status == GOOD
    assert prout(first, path_2, PrOut.REGISTER, sa_key=0xA2, flags=0x01).status == GOOD
    again = Reservations(path)
    again.load()
    assert again.keys == {path_1: 0xA1, path_2: 0xA2}
    rows = json.loads(path.read_text())["registrations"]
    path.write_text(json.dumps({"generation": 1, "registrations": [row[:4] for row in rows[:1]],
                                "holder": None, "type": None}))
    old = Reservations(path)
    old.load()
    assert old.keys == {A: 0xA1}


@pytest.mark.parametrize("text", ["", "{", "[]", '{"generation": 1}', '{"generation": 1, "registrations": [["a"]],'
                                  ' "holder": null, "type": null}', '{"generation": 1, "registrations": [],'
                                  ' "holder": null, "type": 99}'])
def test_a_damaged_file_is_ignored(tmp_path: Path, text: str) -> None:
    path = tmp_path / "0.json"
    path.write_text(text)
    pr = Reservations(path)
    assert pr.keys == {} and pr.type is None


# -- the codec -------------------------------------------------------------------------------------


def test_transport_id_round_trip() -> None:
    tid = transport_id(A)
    assert len(tid) % 4 == 0 and tid[0] == 0x45
    assert parse_transport_id(tid) == (A[0], A[1])
    assert parse_transport_id(b"\x05\0\0\x08iqn.x\0\0\0") == ("iqn.x", None)


@pytest.mark.parametrize("data", [b"", b"\x01\0\0\x04abcd", b"\x45\0\0\x08abc,i,0x", b"\x45\0\0\x04\xff\xfe\0\0",
                                  b"\x85\0\0\x04abc\0"])
def test_bad_transport_ids(data: bytes) -> None:
    with pytest.raises(ScsiError):
        parse_transport_id(data)


def test_parse_prout_register_and_move_lengths() -> None:
    tid = transport_id(B)
    assert parse_prout(PrOut.REGISTER_AND_MOVE, move_body(1, 2, tid, unreg=True)) == ProutParams(
        1, 2, unreg=True, transport_id=tid)
    with pytest.raises(ScsiError):
        parse_prout(PrOut.REGISTER_AND_MOVE, move_body(1, 2, tid)[:-4])


def test_preempting_a_registrants_only_holder_tells_only_the_preempted(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    register(lun, C, 0xC)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert prout(lun, B, PrOut.PREEMPT, key=0xB, sa_key=0xA, pr_type=PrType.WRITE_EXCLUSIVE).status == GOOD
    assert sense(run(lun, A, TUR)) == (6, 0x2A, 0x05)
    assert run(lun, B, TUR).status == GOOD and run(lun, C, TUR).status == GOOD


def test_preempt_names_the_preempted_for_the_transport(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.RESERVE, key=0xA, pr_type=PrType.EXCLUSIVE_ACCESS)
    assert prout(lun, B, PrOut.PREEMPT_AND_ABORT, key=0xB, sa_key=0xA, pr_type=1).status == GOOD
    assert lun.pr.preempted == {A}
    assert prout(lun, B, PrOut.RELEASE, key=0xB, pr_type=1).status == GOOD
    assert lun.pr.preempted == frozenset()


def test_request_sense_reports_and_clears_a_reservation_attention(lun: Lun) -> None:
    register(lun, A, 0xA)
    register(lun, B, 0xB)
    prout(lun, A, PrOut.CLEAR, key=0xA)
    r = run(lun, B, bytes([0x03, 0, 0, 0, 18, 0]))
    assert r.status == GOOD and materialize(r.data)[12:14] == b"\x2a\x03"
    assert run(lun, B, TUR).status == GOOD
