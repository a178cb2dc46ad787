"""One target through two portals on loopback (127.0.0.1 and 127.0.0.2, one
portal group each), driven by tests/iscsi_client.py: what a multipath
initiator sees of the paths (RFC 7143 §4.4.1, §6.3.5, §13.9, appendix C;
SPC-4 §7.8.6, §6.36). libiscsi's MultipathIO and a path lost during I/O
are in tests/e2e/test_multipath.py."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from target.pdu import LoginResponse, TextResponse
from target.scsi.ports import MAINTENANCE_IN, SA_REPORT_TARGET_PORT_GROUPS
from target.server import Portal, TargetServer
from target.targets import LunSpec, Target, TargetSpec
from target.text import decode_text
from tests.e2e.peers import free_port
from tests.iscsi_client import Client, read10, write10
from tests.test_target_wire import read_all

IQN = "iqn.2026-11.test:paths"
SIZE = 4 << 20
HOSTS = ("127.0.0.1", "127.0.0.2")


class TwoPortals:
    """A target server listening on both loopback addresses, portal groups
    1 and 2 (numbered by the server), on its own loop thread."""

    def __init__(self, image: Path, **spec: Any) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        target = Target.open(TargetSpec(IQN, (LunSpec(str(image)),), alias="paths", **spec))
        self.server = TargetServer([target], [Portal(h, self.port) for h in HOSTS], nop_interval=0)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def login(self, path: int, **kw: Any) -> Client:
        c = Client(HOSTS[path], self.port, **kw)
        r = c.login(IQN)
        assert r.status_class == 0 and r.transit and r.tsih, r
        return c


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(os.urandom(SIZE))
    return p


@pytest.fixture
def paths(image: Path) -> Iterator[TwoPortals]:
    r = TwoPortals(image)
    yield r
    r.stop()


def scsi_in(c: Client, cdb: bytes, length: int) -> bytes:
    data, status = read_all(c, c.command(cdb, read=length))
    assert status == 0
    return data


def designators(page83: bytes) -> list[tuple[int, int, bytes]]:
    """(byte 0, byte 1, value) of each designator of VPD page 83h."""
    out, i = [], 4
    while i < 4 + int.from_bytes(page83[2:4], "big"):
        length = page83[i + 3]
        out.append((page83[i], page83[i + 1], page83[i + 4:i + 4 + length]))
        i += 4 + length
    return out


def test_login_answers_the_portal_group_it_came_in_on(paths: TwoPortals) -> None:
    for path in (0, 1):
        c = paths.login(path)
        assert c.keys["TargetPortalGroupTag"] == str(path + 1)
        c.close()


def test_send_targets_lists_every_portal_with_its_group(paths: TwoPortals) -> None:
    c = Client(HOSTS[1], paths.port)
    assert c.login(None).status_class == 0
    c.text([("SendTargets", "All")])
    r = c.recv()
    assert isinstance(r, TextResponse)
    assert decode_text(r.data) == [("TargetName", IQN), ("TargetAddress", f"127.0.0.1:{paths.port},1"),
                                   ("TargetAddress", f"127.0.0.2:{paths.port},2")]


def test_vpd_83_same_lu_own_port(paths: TwoPortals) -> None:
    """The logical unit's designators are the same through both paths (what
    dm-multipath and libiscsi join paths by); the target port ones are
    each path's own."""
    pages = [scsi_in(paths.login(p), bytes([0x12, 1, 0x83, 1, 0, 0]), 256) for p in (0, 1)]
    lu = [[d for d in designators(p) if d[1] & 0x30 == 0] for p in pages]
    assert lu[0] == lu[1] and lu[0][0][1] == 0x03 and lu[0][0][2][0] >> 4 == 6  # NAA 6 first
    for path, page in enumerate(pages, 1):
        port = {(b1 & 0x3F): value for b0, b1, value in designators(page) if b1 & 0x30}
        assert port[0x14] == struct.pack(">HH", 0, path)  # relative target port
        assert port[0x15] == struct.pack(">HH", 0, path)  # target port group
        assert port[0x18].rstrip(b"\0") == f"{IQN},t,0x{path:04x}".encode()  # SCSI target port name
        assert port[0x28].rstrip(b"\0") == IQN.encode()  # target device name


def test_standard_inquiry_says_implicit_alua(paths: TwoPortals) -> None:
    data = scsi_in(paths.login(0), bytes([0x12, 0, 0, 0, 96, 0]), 96)
    assert (data[5] >> 4) & 0x03 == 1


@pytest.mark.parametrize("data_format", [0, 1])
def test_report_target_port_groups(paths: TwoPortals, data_format: int) -> None:
    cdb = struct.pack(">BBxxxxIxx", MAINTENANCE_IN, data_format << 5 | SA_REPORT_TARGET_PORT_GROUPS, 1024)
    data = scsi_in(paths.login(1), cdb, 1024)
    header = 8 if data_format else 4
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    if data_format:
        assert data[4] >> 4 == 1
    groups = [data[i:i + 12] for i in range(header, len(data), 12)]
    assert [(g[0] & 0x0F, int.from_bytes(g[2:4], "big"), g[7], int.from_bytes(g[10:12], "big"))
            for g in groups] == [(0, 1, 1, 1), (0, 2, 1, 2)]  # active/optimized, group n holds port n


def test_report_target_port_groups_is_a_supported_opcode(paths: TwoPortals) -> None:
    cdb = struct.pack(">BBBBHIxx", MAINTENANCE_IN, 0x0C, 0x02, MAINTENANCE_IN, SA_REPORT_TARGET_PORT_GROUPS, 64)
    data = scsi_in(paths.login(0), cdb, 64)
    assert data[1] & 0x07 == 0x03  # SUPPORT 011b: supported as the standard says


def test_write_through_one_path_is_read_through_the_other(paths: TwoPortals) -> None:
    a, b = paths.login(0), paths.login(1, isid=bytes.fromhex("400000000002"))
    block = os.urandom(4096)
    r = a.command(write10(16, 8), write=block, immediate_len=len(block))
    assert read_all(a, r)[1] == 0
    assert scsi_in(b, read10(16, 8), 4096) == block


def test_same_isid_through_two_groups_is_two_sessions(paths: TwoPortals) -> None:
    """§4.4.1: a session is ISID and TPGT; the same ISID through another
    portal group is another path, not a reinstatement (§6.3.5)."""
    a, b = paths.login(0), paths.login(1)
    assert a.tsih != b.tsih
    for c in (a, b):
        assert len(scsi_in(c, read10(0, 1), 512)) == 512
    again = paths.login(0)  # the same ISID through the same group: reinstates ``a``
    assert a.recv(timeout=5) is None
    assert len(scsi_in(again, read10(0, 1), 512)) == 512
    assert len(scsi_in(b, read10(0, 1), 512)) == 512


def test_tsih_of_another_portal_group_is_no_session(paths: TwoPortals) -> None:
    """§4.4.1: TSIHs are a portal group's; a login adding a connection to
    a session (here: replacing its connection, ERL 0) through another group
    finds none; through its own group the connection is replaced."""
    a = paths.login(0)
    c = Client(HOSTS[1], paths.port)
    c.tsih = a.tsih
    r = c.login(IQN)
    assert isinstance(r, LoginResponse) and (r.status_class, r.status_detail) == (2, 0x0A)
    same = Client(HOSTS[0], paths.port)
    same.tsih = a.tsih
    r = same.login(IQN)
    assert r.status_class == 0 and r.tsih == a.tsih
    assert a.recv(timeout=5) is None
    assert len(scsi_in(same, read10(0, 1), 512)) == 512


def test_one_writer_on_two_paths(image: Path) -> None:
    """A machine's own disk (one writer) may be reached by that machine
    through both paths; the same machine logging in again through one
    path replaces only that path's session; someone else is refused."""
    srv = TwoPortals(image, single_writer=True)
    try:
        a = srv.login(0, isid=bytes.fromhex("400000000001"))
        b = srv.login(1, isid=bytes.fromhex("400000000002"))
        assert len(scsi_in(a, read10(0, 1), 512)) == len(scsi_in(b, read10(0, 1), 512)) == 512
        c = srv.login(0, isid=bytes.fromhex("400000000003"))
        assert a.recv(timeout=5) is None
        assert len(scsi_in(b, read10(0, 1), 512)) == len(scsi_in(c, read10(0, 1), 512)) == 512
        other = Client(HOSTS[1], srv.port, initiator="iqn.2026-11.test:other")
        assert other.login(IQN).status_class == 3
    finally:
        srv.stop()
