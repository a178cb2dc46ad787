"""Large PDUs (RFC 7143 §13.12-13.14): MaxRecvDataSegmentLength and
MaxBurstLength up to 16 MiB after login, a 16 MiB write in one Data-Out and
read back in one Data-In, over real TCP; the login phase stays at 8 KiB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.keys import MAX_24, KeyValueError
from target.pdu import R2T, DataIn, LoginRequest, Reject, ScsiResponse, Stage
from target.server import Portal, TargetServer
from tests.iscsi_client import read10, write10
from tests.test_target_wire import IQN, Running

BIG = 16776192  # what open-iscsi offers for MaxBurstLength: 16 MiB - 1 KiB


@pytest.fixture
def big(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(32 << 20))
    r = Running(image, key_preferences={"MaxRecvDataSegmentLength": str(MAX_24)})
    yield r, image
    r.stop()


def test_16_mib_write_and_read_in_one_pdu_each(big: tuple[Running, Path]) -> None:
    srv, image = big
    c = srv.client()
    r = c.login(IQN, MaxRecvDataSegmentLength=str(BIG), MaxBurstLength=str(BIG), InitialR2T="Yes",
                ImmediateData="No")
    assert r.status_class == 0
    assert c.keys["MaxRecvDataSegmentLength"] == str(MAX_24) and c.keys["MaxBurstLength"] == str(BIG)
    payload = os.urandom(BIG)
    itt = c.command(write10(8, BIG // 512), write=payload)
    r2t = c.recv()
    assert isinstance(r2t, R2T) and r2t.buffer_offset == 0 and r2t.desired_length == BIG  # one burst
    c.data_out(itt, r2t.ttt, 0, payload)  # one Data-Out PDU of 16 MiB - 1 KiB
    resp = c.recv(30)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    with open(image, "rb") as f:
        f.seek(8 * 512)
        assert f.read(BIG) == payload
    c.command(read10(8, BIG // 512), read=BIG)
    pdu = c.recv(30)
    # §11.7.4: the whole read is one Data-In carrying the status too
    assert isinstance(pdu, DataIn) and pdu.status_present and pdu.status == 0
    assert len(pdu.data) == BIG and pdu.data == payload
    c.close()


def test_login_phase_still_refuses_large_segments(big: tuple[Running, Path]) -> None:
    """Before Full Feature Phase nothing over 8 KiB is taken, whatever the
    target declares for later: an unauthenticated peer cannot make it hold more."""
    srv, _ = big
    c = srv.client()
    c.send(LoginRequest(immediate=True, transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                        isid=c.isid, itt=1, data=b"InitiatorName=x\0".ljust(1 << 16, b"\0")))
    pdu = c.recv(5)
    assert pdu is None or isinstance(pdu, Reject) or getattr(pdu, "status_class", 0) != 0
    c.close()


def test_declared_length_out_of_range_is_refused() -> None:
    with pytest.raises(KeyValueError, match="MaxRecvDataSegmentLength"):
        TargetServer([], [Portal("127.0.0.1", 0)], key_preferences={"MaxRecvDataSegmentLength": str(1 << 24)})


