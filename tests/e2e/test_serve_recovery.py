"""`bootsvc serve -c` and ErrorRecoveryLevel (docs/iscsi-recovery.md):
the level an initiator gets by default and with iscsi.error_recovery_level,
and a lost Data-In asked for again, through the whole product."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from target.limits import DATA_OUT_TIMEOUT
from target.pdu import R2T, DataIn, Reject, RejectReason, ScsiResponse
from target.recovery import SnackType
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port
from tests.iscsi_client import Client, read10, write10
from tests.test_target_wire import read_all

pytestmark = pytest.mark.e2e
IQN = "iqn.2026-11.test:erl"


def _serve(tmp_path: Path, iscsi: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
listen:
  iscsi: [{LOOPBACK}:{port}]
targets:
  - iqn: {IQN}
    luns: [disk.img]
    auth: none
{iscsi}
""")
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def test_erl2_by_default_and_lost_data_in_sent_again(tmp_path: Path) -> None:
    """The default iscsi.error_recovery_level is 2 (MC/S connection
    recovery); it includes ERL 1's SNACK, and the recovery R2T for a write
    whose last Data-Out never came (target.limits.DATA_OUT_TIMEOUT)."""
    image = os.urandom(4 << 20)
    (tmp_path / "disk.img").write_bytes(image)
    proc, port = _serve(tmp_path, "")
    try:
        c = Client(LOOPBACK, port)
        assert c.login(IQN, ErrorRecoveryLevel="2", MaxRecvDataSegmentLength="8192", InitialR2T="Yes",
                       ImmediateData="No").status_class == 0
        assert c.keys["ErrorRecoveryLevel"] == "2"
        itt = c.command(read10(16, 64), read=32 << 10)
        pdus = []
        while not (pdus and pdus[-1].status_present):
            pdu = c.recv()
            assert isinstance(pdu, DataIn)
            pdus.append(pdu)
        c.expstatsn = pdus[-1].statsn  # DataSN 2 "lost": its status not acknowledged
        c.snack(SnackType.DATA_R2T, itt=itt, begrun=2, runlength=1)
        again = c.recv()
        assert isinstance(again, DataIn) and again.datasn == 2
        assert bytes(again.data) == image[16 * 512 + 2 * 8192:16 * 512 + 3 * 8192]
        c.expstatsn = pdus[-1].statsn + 1
        payload = os.urandom(16 << 10)
        itt = c.command(write10(100, 32), write=payload)
        r2t = c.recv()
        assert isinstance(r2t, R2T) and r2t.desired_length == len(payload)
        c.data_out(itt, r2t.ttt, 0, payload[:8192], final=False)  # the second and last is "lost"
        recovery = c.recv(timeout=2 * DATA_OUT_TIMEOUT + 5)
        assert isinstance(recovery, R2T) and (recovery.buffer_offset, recovery.desired_length) == (8192, 8192)
        c.data_out(itt, recovery.ttt, 8192, payload[8192:])
        resp = c.recv()
        assert isinstance(resp, ScsiResponse) and resp.status == 0
        data, status = read_all(c, c.command(read10(100, 32), read=len(payload)))
        assert (data, status) == (payload, 0)
        c.close()
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_error_recovery_level_0_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    proc, port = _serve(tmp_path, "iscsi: {error_recovery_level: 0}")
    try:
        c = Client(LOOPBACK, port)
        assert c.login(IQN, ErrorRecoveryLevel="1").status_class == 0
        assert c.keys["ErrorRecoveryLevel"] == "0"
        c.snack(SnackType.STATUS, begrun=0)
        r = c.recv()
        assert isinstance(r, Reject) and r.reason == RejectReason.SNACK_REJECT
        c.close()
    finally:
        stop(proc)
    assert proc.returncode == 0
