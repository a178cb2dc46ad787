"""`bootsvc serve -c` and ErrorRecoveryLevel (docs/iscsi-recovery.md):
the level an initiator gets by default and with iscsi.error_recovery_level,
and a lost Data-In asked for again, through the whole product."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from target.pdu import DataIn, Reject, RejectReason
from target.recovery import SnackType
from tests.e2e.peers import LOOPBACK, free_port, stop, wait_for_port
from tests.iscsi_client import Client, read10

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
    recovery); it includes ERL 1's SNACK."""
    image = os.urandom(4 << 20)
    (tmp_path / "disk.img").write_bytes(image)
    proc, port = _serve(tmp_path, "")
    try:
        c = Client(LOOPBACK, port)
        assert c.login(IQN, ErrorRecoveryLevel="2", MaxRecvDataSegmentLength="8192").status_class == 0
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
