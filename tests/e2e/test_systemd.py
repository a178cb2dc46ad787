"""The systemd unit is valid (systemd-analyze verify), and `bootsvc serve`
speaks sd_notify: READY=1 once serving, RELOADING=1/READY=1 around a SIGHUP
reload, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, stop

pytestmark = pytest.mark.e2e
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "bootsvc.service"


def test_unit_verifies(tmp_path: Path) -> None:
    need("systemd-analyze")
    # verify needs its commands to exist: point them at one that does
    unit = tmp_path / "bootsvc.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/bootsvc", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


MAX_EXPOSURE = 4.0  # systemd-analyze security: 9.3 UNSAFE as full root, 1.6 sandboxed


def test_unit_is_sandboxed(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's exposure at most
    MAX_EXPOSURE, and --threshold makes it fail above (its exit status)."""
    need("systemd-analyze")
    unit = tmp_path / "bootsvc.service"
    unit.write_text(UNIT.read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={MAX_EXPOSURE * 10:.0f}",
                        "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for bootsvc.service: (\d+\.\d+)", r.stdout)
    assert found is not None, r.stdout + r.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_capabilities_are_exactly_what_bootsvc_uses() -> None:
    """Ports below 1024 and the raw ICMPv6 socket of router advertisements;
    nothing more, and the bounding set equal to what the process is given."""
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line
                    and not line.startswith("#"))
    assert set(settings["CapabilityBoundingSet"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"]
    assert settings["User"] == "bootsvc" and settings["StateDirectory"] == "bootsvc"
    sysusers = (UNIT.parent / "bootsvc.sysusers").read_text()
    assert re.search(r"^u bootsvc - .* /var/lib/bootsvc ", sysusers, re.M), sysusers


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


def test_unit_logs_one_line_per_event(tmp_path: Path) -> None:
    """The unit's own command line, no -v: each event is one INFO line in
    the journal (its stderr), and nothing else is said about it."""
    exec_start = next(line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
                      if line.startswith("ExecStart="))
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  http: {LOOPBACK}:{port}\n")
    argv = exec_start.replace("/etc/bootsvc/bootsvc.yaml", str(cfg)).split()
    assert argv[0] == "/usr/local/bin/bootsvc", exec_start
    log = tmp_path / "serve.log"
    proc = bootsvc_serve(cfg, log, "ready:", argv=argv[1:])
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while "event=http.request" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(proc)
    lines = [line for line in log.read_text().splitlines() if "/healthz" in line]
    assert len(lines) == 1 and " INFO bootsvc.http event=http.request " in lines[0], log.read_text()
