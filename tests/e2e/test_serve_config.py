"""`bootsvc serve -c` with targets, LUNs and a read-only flag from YAML,
checked from the outside with libiscsi's tools and qemu-img."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, machine_chap, stop, wait_for_port
from tests.qcow2_oracle import assert_check_clean

pytestmark = pytest.mark.e2e


def test_serve_from_config(tmp_path: Path) -> None:
    need("iscsi-ls", "qemu-img")
    (tmp_path / "a.img").write_bytes(bytes(4 << 20))
    (tmp_path / "b.img").write_bytes(b"\x11" * (2 << 20))
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
listen:
  iscsi: [{LOOPBACK}:{port}]
targets:
  - iqn: iqn.2026-11.test:one
    luns: [a.img, {{path: b.img, read_only: true}}]
    chap: {{user: one, secret: one-secret-123}}
  - iqn: iqn.2026-11.test:two
    luns: [b.img]
    auth: none
""")
    check = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "2 extra target(s) with 3 LUN(s)" in check.stdout, check.stderr
    proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        ls = subprocess.run(["iscsi-ls", "-s", f"iscsi://{LOOPBACK}:{port}"], capture_output=True, text=True,
                            timeout=30)
        assert "iqn.2026-11.test:one" in ls.stdout and "iqn.2026-11.test:two" in ls.stdout, ls.stdout
        one = f"iscsi://one%one-secret-123@{LOOPBACK}:{port}/iqn.2026-11.test:one/1"
        info = subprocess.run(["qemu-img", "info", one], capture_output=True, text=True, timeout=30)
        assert "2 MiB" in info.stdout, info.stdout + info.stderr
        refused = subprocess.run(["qemu-img", "info", one.replace("one-secret-123", "not-the-secret")],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0
        w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k", one],
                           capture_output=True, text=True, timeout=30)
        assert w.returncode != 0 or "failed" in (w.stdout + w.stderr).lower()
    finally:
        stop(proc)
    assert proc.returncode == 0  # SIGTERM ends it cleanly
    assert (tmp_path / "b.img").read_bytes() == b"\x11" * (2 << 20)


def test_check_reports_file_line_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("targets:\n  - iqn: nope\n    luns: [missing.img]\n")
    r = subprocess.run([sys.executable, "-m", "bootsvc", "check", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{cfg}:2: targets[0].iqn:" in r.stderr and "does not exist" in r.stderr


def _io(port: int, target: str, initiator: str, *commands: str, chap: str = "") -> subprocess.CompletedProcess[str]:
    """qemu-io through QEMU's iSCSI driver, logging in as ``initiator``
    (with ``chap``: QEMU's user=,password= options)."""
    opts = (f"driver=iscsi,transport=tcp,portal={LOOPBACK}:{port},target={target},lun=0,"
            f"initiator-name={initiator}{chap}")
    args = [a for c in commands for a in ("-c", c)]
    return subprocess.run(["qemu-io", "--image-opts", *args, opts], capture_output=True, text=True, timeout=60)


def test_machines_boot_from_their_overlays(tmp_path: Path) -> None:
    """Each machine gets a target on its own overlay that only its initiator
    may log in to; overlays keep writes across a server restart (an
    ephemeral one too: a restart is no new boot; its next boot, or `image
    reset`, starts it fresh), the base never changes."""
    need("qemu-io", "qemu-img")
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    base = state / "images" / "gold.raw"
    base.write_bytes(b"\xee" * (8 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "keep.yaml").write_text("base: gold.raw\noverlay: persistent\noverlay_limit: 6M\n")
    (tmp_path / "profiles" / "fresh.yaml").write_text("base: gold.raw\noverlay: ephemeral\n")
    port = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
iqn_prefix: iqn.2026-11.test.lab
profiles_dir: profiles
listen:
  iscsi: [{LOOPBACK}:{port}]
machines:
  52:54:00:00:00:01: {{hostname: keeper, profile: keep}}
  52:54:00:00:00:02: {{hostname: kiosk, profile: fresh}}
""")
    prefix = "iqn.2026-11.test.lab"

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)],
                                stderr=subprocess.DEVNULL)
        wait_for_port(port, proc)
        return proc

    macs = {"keeper": "52:54:00:00:00:01", "kiosk": "52:54:00:00:00:02"}

    def chap(host: str) -> str:
        return machine_chap(state, macs[host], f"{prefix}:{host}")

    proc = serve()
    try:
        for host in ("keeper", "kiosk"):
            # the machine's name alone is not enough: CHAP with its own secret is
            bare = _io(port, f"{prefix}:boot.{host}", f"{prefix}:{host}", "read 0 4k")
            assert bare.returncode != 0 and "Authentication failure" in bare.stderr, bare.stdout + bare.stderr
            w = _io(port, f"{prefix}:boot.{host}", f"{prefix}:{host}", "write -P 0x42 1M 1M", "flush",
                    chap=chap(host))
            assert w.returncode == 0 and "wrote" in w.stdout, w.stdout + w.stderr
        stranger = _io(port, f"{prefix}:boot.keeper", f"{prefix}:kiosk", "read 0 4k", chap=chap("kiosk"))
        assert stranger.returncode != 0 or "failed" in (stranger.stdout + stranger.stderr).lower()
        over = _io(port, f"{prefix}:boot.keeper", f"{prefix}:keeper", "write -P 0x43 2M 6M", chap=chap("keeper"))
        assert "failed" in (over.stdout + over.stderr).lower()  # past the 6 MiB limit: refused
        listing = subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), "list"],
                                 capture_output=True, text=True, timeout=30)
        assert "keeper" in listing.stdout and "of 6.0 MiB allocated" in listing.stdout and "in use" in listing.stdout
        busy = subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), "reset", "keeper"],
                              capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1 and "in use" in busy.stderr
    finally:
        stop(proc)
    for host in ("keeper", "kiosk"):
        assert_check_clean(state / "overlays" / f"{host}.qcow2")
    for expect in ({"keeper": "0x42", "kiosk": "0x42"}, {"keeper": "0x42", "kiosk": "0xee"}):
        proc = serve()
        try:
            for host, pattern in expect.items():
                r = _io(port, f"{prefix}:boot.{host}", f"{prefix}:{host}", f"read -P {pattern} 1M 1M",
                        chap=chap(host))
                assert r.returncode == 0 and "pattern verification failed" not in r.stdout, host + r.stdout
        finally:
            stop(proc)
        reset = subprocess.run([sys.executable, "-m", "bootsvc", "image", "-c", str(cfg), "reset", "kiosk"],
                               capture_output=True, text=True, timeout=30)
        assert reset.returncode == 0, reset.stderr
    assert base.read_bytes() == b"\xee" * (8 << 20)


def test_serve_tftp_from_config(tmp_path: Path) -> None:
    """listen.tftp in the config: iPXE-sized files to the tftp-hpa client;
    a taken port is reported in one line while the other services serve."""
    need("tftp")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "undionly.kpxe").write_bytes(os.urandom(70_000))
    port, iscsi_port = free_port(), free_port()
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    cfg, other = tmp_path / "bootsvc.yaml", tmp_path / "other.yaml"
    for path, state in ((cfg, "state"), (other, "other-state")):
        path.write_text(f"state_dir: {tmp_path / state}\nlisten:\n  tftp: {LOOPBACK}:{port}\n"
                        f"  iscsi: [{LOOPBACK}:{iscsi_port}]\n"
                        f"tftp: {{roots: [root]}}\ntargets:\n  - {{iqn: iqn.2026-11.test:d, luns: [disk.img], auth: none}}\n")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], stderr=err)
    try:
        wait_for_port(iscsi_port, proc)
        out = tmp_path / "got"
        r = subprocess.run(["tftp", "-m", "binary", LOOPBACK, str(port), "-c", "get", "undionly.kpxe", str(out)],
                           capture_output=True, text=True, timeout=30)
        assert out.read_bytes() == (tmp_path / "root" / "undionly.kpxe").read_bytes(), r.stdout + r.stderr
        # a second server (its own state) on the same ports: each service that cannot start says so in one line
        second = subprocess.run([sys.executable, "-m", "bootsvc", "serve", "-c", str(other)], capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1 and "tftp not started" in second.stderr and "iscsi not started" in second.stderr
    finally:
        stop(proc)
    assert "tftp serving" in log.read_text()


def test_healthz_is_503_while_a_service_cannot_start(tmp_path: Path) -> None:
    """TFTP's port is taken: HTTP serves, and /healthz says 503 and why;
    a load balancer must not count this server as whole."""
    import socket

    from tests.e2e.peers import bootsvc_serve

    need("curl")
    http = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        cfg = tmp_path / "bootsvc.yaml"
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  tftp: {LOOPBACK}:{taken.getsockname()[1]}\n"
                       f"  http: {LOOPBACK}:{http}\n")
        proc = bootsvc_serve(cfg, tmp_path / "serve.log", "ready:")
        try:
            r = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "%{http_code}",
                                f"http://{LOOPBACK}:{http}/healthz"], capture_output=True, text=True, timeout=20)
        finally:
            stop(proc)
    assert r.stdout == "degraded\nrecorder: serving\ntftp: failed: Address already in use\nhttp: serving\n503", \
        r.stdout + r.stderr


def test_one_serve_per_state_dir(tmp_path: Path) -> None:
    """A second `bootsvc serve` on the same state names the first's PID and
    exits touching nothing: the first keeps its pid file, so `bootsvc
    reload` still reaches it."""
    from tests.e2e.peers import bootsvc_serve

    http = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  http: {LOOPBACK}:{http}\n")
    first = bootsvc_serve(cfg, tmp_path / "first.log", "ready:")
    try:
        pidfile = tmp_path / "state" / "bootsvc.pid"
        assert pidfile.read_text().strip() == str(first.pid)
        limits = Path(f"/proc/{first.pid}/limits").read_text()
        [soft, hard] = [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")][0]
        assert soft == hard  # the descriptor limit raised to the hard one
        second = subprocess.run([sys.executable, "-m", "bootsvc", "serve", "-c", str(cfg)], capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1 and f"another bootsvc serve (PID {first.pid})" in second.stderr, second.stderr
        assert pidfile.read_text().strip() == str(first.pid)
        reload = subprocess.run([sys.executable, "-m", "bootsvc", "reload", "-c", str(cfg)], capture_output=True,
                                text=True, timeout=30)
        assert reload.returncode == 0 and str(first.pid) in reload.stdout, reload.stderr
    finally:
        stop(first)
    assert not (tmp_path / "state" / "bootsvc.pid").exists()
    # the lock went with it: the next one starts
    again = bootsvc_serve(cfg, tmp_path / "again.log", "ready:")
    stop(again)


def test_descriptor_exhaustion_is_survived_quietly(tmp_path: Path) -> None:
    """Under a hard limit of 64 descriptors, 150 connections from several
    addresses: the log says so in a few lines (no tracebacks), and once
    they close, HTTP serves again."""
    import socket
    import time

    from bootsvc.vm.run import start_serve

    need("prlimit", "curl")
    http = free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nlisten:\n  http: {LOOPBACK}:{http}\n")
    log = tmp_path / "serve.log"
    proc = start_serve(cfg, log, ("prlimit", "--nofile=64:64"), "ready:")
    flood: list[socket.socket] = []
    try:
        for i in range(150):  # from 127.0.1.x: the per-source cap is not what this is about
            s = socket.socket()
            s.bind((f"127.0.1.{i % 50 + 1}", 0))
            s.settimeout(5)
            s.connect((LOOPBACK, http))
            flood.append(s)
        time.sleep(2.5)
        for s in flood:
            s.close()
        flood.clear()
        time.sleep(1.5)  # asyncio pauses a starved listener for a second
        r = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{LOOPBACK}:{http}/healthz"],
                           capture_output=True, text=True, timeout=20)
        assert r.stdout.startswith("ok"), r.stderr
    finally:
        for s in flood:
            s.close()
        stop(proc)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert 1 <= text.count("out of descriptors") <= 6, text[-3000:]
