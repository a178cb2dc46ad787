"""target/scsi/ports.py without a network: the per-path designators of VPD
page 83h (SPC-4 §7.8.6) and REPORT TARGET PORT GROUPS (§6.36)."""

from __future__ import annotations

import struct

import pytest

from target.scsi.lun import target_port_groups
from target.scsi.ports import port_designators, report_target_port_groups
from target.scsi.sense import ScsiStatus

IQN = "iqn.2026-11.test:ports"


def rtpg(data_format: int = 0, alloc: int = 1024) -> bytes:
    return struct.pack(">BBxxxxIxx", 0xA3, data_format << 5 | 0x0A, alloc)


def test_designators_of_an_iscsi_nexus() -> None:
    raw = port_designators(("iqn.2026-11.test:init", bytes(6), IQN, 3))
    out, i = [], 0
    while i < len(raw):
        out.append((raw[i], raw[i + 1], raw[i + 4:i + 4 + raw[i + 3]]))
        assert raw[i + 3] % 4 == 0  # SPC-4: designator lengths here are multiples of 4
        i += 4 + raw[i + 3]
    assert out == [(0x51, 0x94, bytes([0, 0, 0, 3])), (0x51, 0x95, bytes([0, 0, 0, 3])),
                   (0x53, 0x98, f"{IQN},t,0x0003".encode().ljust(32, b"\0")),
                   (0x53, 0xA8, IQN.encode().ljust(24, b"\0"))]


def test_a_nexus_that_names_no_port_has_no_port_designators() -> None:
    assert port_designators("embedder's own nexus") == b""
    assert port_designators(("init", bytes(6), IQN)) == b""  # before portal groups


def test_report_target_port_groups_formats() -> None:
    short = report_target_port_groups((1, 2), rtpg(0))
    assert len(short) == 4 + 24 and int.from_bytes(short[:4], "big") == 24
    extended = report_target_port_groups((1, 2), rtpg(1))
    assert extended[4] == 0x10 and extended[8:] == short[4:]


@pytest.mark.parametrize("cdb", [rtpg(2), rtpg(7)])
def test_report_target_port_groups_refuses_unknown_formats(cdb: bytes) -> None:
    r = target_port_groups((1,), cdb)
    assert r.status == ScsiStatus.CHECK_CONDITION


def test_report_target_port_groups_is_cut_to_the_allocation_length() -> None:
    r = target_port_groups((1, 2, 3), rtpg(0, alloc=10))
    assert r.status == ScsiStatus.GOOD and len(b"".join(bytes(d) for d in r.data)) == 10
