"""The systemd unit is valid (systemd-analyze verify), and `bootsvc serve`
speaks sd_notify: READY=1 once serving, RELOADING=1/READY=1 around a SIGHUP
reload, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop

pytestmark = pytest.mark.e2e
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "bootsvc.service"


def test_unit_verifies(tmp_path: Path) -> None:
    need("systemd-analyze")
    # verify needs its commands to exist: point them at one that does
    unit = tmp_path / "bootsvc.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/bootsvc", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sd_notify(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  http: {LOOPBACK}:{free_port()}\n")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                                env={**os.environ, "NOTIFY_SOCKET": address}, stderr=subprocess.DEVNULL)
        try:
            first = sock.recv(4096).decode()
            assert first.startswith("READY=1\nSTATUS=1 of 1 services serving"), first
            proc.send_signal(signal.SIGHUP)
            assert sock.recv(4096) == b"RELOADING=1" and sock.recv(4096) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert proc.wait(10) == 0
        finally:
            stop(proc)
